// Package outlier decides passive outlier ejection on one node: which
// backends of which Services new connects from this node avoid, after the
// datapath reported consecutive failed connects to them, for how long, and
// never more than a maximum share of a frontend's backends. It is pure: the
// caller passes the time and the reports, and applies the ejections to the
// model's state before it is written (Apply), so the EndpointSlices stay
// the source of truth for membership.
package outlier

import (
	"math"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
)

// Config holds the ejection rule (Envoy's): a backend's n-th ejection
// lasts min(BaseEjection × n, MaxEjection); MaxShare bounds the share of
// a frontend's backends ejected at once.
type Config struct {
	BaseEjection time.Duration
	MaxEjection  time.Duration
	// MaxShare is in [0, 1]: with n backends at most floor(MaxShare × n)
	// are ejected, so a lone backend never is.
	MaxShare float64
}

// DefaultConfig is the agent's default: 30 s, 5 min, 50 %.
var DefaultConfig = Config{BaseEjection: 30 * time.Second, MaxEjection: 5 * time.Minute, MaxShare: 0.5}

// Key is one backend of one Service.
type Key struct {
	Service types.NamespacedName
	Backend lb.Backend
}

type entry struct {
	// ejections counts this backend's ejections since it was last
	// forgotten (the multiplier of the ejection time).
	ejections int
	// at and until bound the current or last ejection.
	at, until time.Time
}

// Detector holds the ejection state. It is not safe for concurrent use.
type Detector struct {
	cfg     Config
	entries map[Key]*entry
}

// New returns a Detector with no backend ejected.
func New(cfg Config) *Detector {
	return &Detector{cfg: cfg, entries: map[Key]*entry{}}
}

// Failed records that connects to k.Backend through a frontend of
// k.Service whose backends are members failed often enough in a row. It
// ejects the backend until the returned time, unless it is ejected
// already, is not a member, or ejecting it would take the share of
// ejected members above MaxShare (then it returns false).
func (d *Detector) Failed(k Key, members []lb.Backend, now time.Time) (until time.Time, ejected bool) {
	if !slices.Contains(members, k.Backend) {
		return time.Time{}, false
	}
	if e := d.entries[k]; e != nil && e.until.After(now) {
		return e.until, false
	}
	out := 0
	for _, b := range members {
		if e := d.entries[Key{k.Service, b}]; e != nil && e.until.After(now) {
			out++
		}
	}
	if out+1 > allowed(d.cfg.MaxShare, len(members)) {
		return time.Time{}, false
	}
	e := d.entries[k]
	if e == nil {
		e = &entry{}
		d.entries[k] = e
	}
	e.ejections++
	e.at = now
	e.until = now.Add(min(d.cfg.BaseEjection*time.Duration(e.ejections), d.cfg.MaxEjection))
	return e.until, true
}

// allowed is how many of n backends may be ejected at once.
func allowed(share float64, n int) int {
	return int(math.Floor(share*float64(n) + 1e-9))
}

// EjectedUntil returns when k's current ejection ends, and whether it is
// ejected at now.
func (d *Detector) EjectedUntil(k Key, now time.Time) (time.Time, bool) {
	if e := d.entries[k]; e != nil && e.until.After(now) {
		return e.until, true
	}
	return time.Time{}, false
}

// Apply returns state with the ejected backends left out of the
// frontends of Services for which enabled is true. Within one frontend at
// most MaxShare of its backends are left out (the earliest ejected first):
// with every backend failing, connects keep going to all that are left.
// state itself is not changed.
func (d *Detector) Apply(state lb.State, now time.Time, enabled func(types.NamespacedName) bool) lb.State {
	out := lb.State{Services: slices.Clone(state.Services)}
	for i, s := range out.Services {
		if len(s.Backends) == 0 || !enabled(s.Name) {
			continue
		}
		var gone []lb.Backend
		for _, b := range s.Backends {
			if _, ok := d.EjectedUntil(Key{s.Name, b}, now); ok {
				gone = append(gone, b)
			}
		}
		if len(gone) == 0 {
			continue
		}
		slices.SortStableFunc(gone, func(a, b lb.Backend) int {
			return d.entries[Key{s.Name, a}].at.Compare(d.entries[Key{s.Name, b}].at)
		})
		gone = gone[:min(len(gone), allowed(d.cfg.MaxShare, len(s.Backends)))]
		out.Services[i].Backends = slices.DeleteFunc(slices.Clone(s.Backends), func(b lb.Backend) bool {
			return slices.Contains(gone, b)
		})
	}
	return out
}

// Next returns the end of the earliest ejection after now, when the
// state must be applied again; false when nothing is ejected.
func (d *Detector) Next(now time.Time) (time.Time, bool) {
	var next time.Time
	for _, e := range d.entries {
		if e.until.After(now) && (next.IsZero() || e.until.Before(next)) {
			next = e.until
		}
	}
	return next, !next.IsZero()
}

// Forget drops what is known of backends that are not ejected and either
// have been back for MaxEjection (their multiplier starts again) or are
// no longer in their Service (present reports which are).
func (d *Detector) Forget(now time.Time, present func(Key) bool) {
	for k, e := range d.entries {
		if e.until.After(now) && present(k) {
			continue
		}
		if !present(k) || now.Sub(e.until) >= d.cfg.MaxEjection {
			delete(d.entries, k)
		}
	}
}

// Ejected returns the backends ejected at now with their end times.
func (d *Detector) Ejected(now time.Time) map[Key]time.Time {
	out := map[Key]time.Time{}
	for k, e := range d.entries {
		if e.until.After(now) {
			out[k] = e.until
		}
	}
	return out
}

// Package outlier decides passive outlier ejection on one node: which
// backends new TCP connects from this node avoid, after the datapath
// reported consecutive failed connects to them, for how long, and never
// more than a maximum share of a frontend's backends. It is pure: the
// caller passes the time and the reports, and applies the ejections to the
// model's state before it is written (Apply), so the EndpointSlices stay
// the source of truth for membership.
//
// A backend is an endpoint address and port. The kernel counts failures
// per backend, whichever Service the connect went through, so an ejected
// backend is left out of every TCP frontend that lists it and has outlier
// detection on: a dead process is dead for all of them.
package outlier

import (
	"math"
	"slices"
	"time"

	"github.com/socklb/socklb/pkg/lb"
)

// Config holds the ejection rule (Envoy's): a backend's n-th ejection
// lasts min(BaseEjection × n, MaxEjection); MaxShare bounds the share of
// a frontend's backends ejected at once.
type Config struct {
	BaseEjection time.Duration
	MaxEjection  time.Duration
	// MaxShare is in [0, 1]: with n backends at most floor(MaxShare × n)
	// are ejected, and never all n, so a lone backend never is.
	MaxShare float64
}

// DefaultConfig is the agent's default: 30 s, 5 min, 50 %.
var DefaultConfig = Config{BaseEjection: 30 * time.Second, MaxEjection: 5 * time.Minute, MaxShare: 0.5}

// Entry is what the Detector knows of one backend.
type Entry struct {
	// Ejections counts the backend's ejections since it was last
	// forgotten (the multiplier of the ejection time).
	Ejections int
	// At and Until bound the current or last ejection.
	At, Until time.Time
}

// Detector holds the ejection state. It is not safe for concurrent use.
type Detector struct {
	cfg     Config
	entries map[lb.Backend]*Entry
}

// New returns a Detector with no backend ejected.
func New(cfg Config) *Detector {
	return &Detector{cfg: cfg, entries: map[lb.Backend]*Entry{}}
}

// Enabled reports whether s takes part in outlier ejection: a TCP
// frontend (failures are learnt from TCP connects only) whose Service
// has it on, by annotation or by the agent's default.
func (d *Detector) Enabled(s *lb.Service) bool {
	return s.Frontend.Proto == lb.TCP && s.OutlierDetection
}

// Failed records that connects to b, a backend of a frontend whose
// backends are members, failed often enough in a row. It ejects b until
// the returned time, unless it is ejected already, is not a member, or
// ejecting it would take the share of ejected members above MaxShare
// (then it returns false).
func (d *Detector) Failed(b lb.Backend, members []lb.Backend, now time.Time) (until time.Time, ejected bool) {
	if !slices.Contains(members, b) {
		return time.Time{}, false
	}
	if e := d.entries[b]; e != nil && e.Until.After(now) {
		return e.Until, false
	}
	out := 0
	for _, m := range members {
		if _, ok := d.EjectedUntil(m, now); ok {
			out++
		}
	}
	if out+1 > allowed(d.cfg.MaxShare, len(members)) {
		return time.Time{}, false
	}
	e := d.entries[b]
	if e == nil {
		e = &Entry{}
		d.entries[b] = e
	}
	e.Ejections++
	e.At = now
	e.Until = now.Add(min(d.cfg.BaseEjection*time.Duration(e.Ejections), d.cfg.MaxEjection))
	return e.Until, true
}

// allowed is how many of n backends may be ejected at once: never all
// of them, whatever the share, so that an outage is never turned into a
// refusal.
func allowed(share float64, n int) int {
	return min(int(math.Floor(share*float64(n)+1e-9)), n-1)
}

// EjectedUntil returns when b's current ejection ends, and whether it is
// ejected at now.
func (d *Detector) EjectedUntil(b lb.Backend, now time.Time) (time.Time, bool) {
	if e := d.entries[b]; e != nil && e.Until.After(now) {
		return e.Until, true
	}
	return time.Time{}, false
}

// Apply returns state with the ejected backends moved from Backends to
// Ejected in the frontends that are Enabled. Within one frontend at most
// MaxShare of its backends are left out (the earliest ejected first):
// with every backend failing, connects keep going to all that are left.
// state itself is not changed.
func (d *Detector) Apply(state lb.State, now time.Time) lb.State {
	if _, ejected := d.Next(now); !ejected {
		return state // a pass over every frontend only while one is ejected
	}
	out := lb.State{Services: slices.Clone(state.Services)}
	for i := range out.Services {
		s := &out.Services[i]
		if len(s.Backends) == 0 || !d.Enabled(s) {
			continue
		}
		var gone []lb.Backend
		for _, b := range s.Backends {
			if _, ok := d.EjectedUntil(b, now); ok {
				gone = append(gone, b)
			}
		}
		if len(gone) == 0 {
			continue
		}
		slices.SortStableFunc(gone, func(a, b lb.Backend) int {
			return d.entries[a].At.Compare(d.entries[b].At)
		})
		gone = gone[:min(len(gone), allowed(d.cfg.MaxShare, len(s.Backends)))]
		if len(gone) == 0 {
			continue
		}
		slices.SortFunc(gone, lb.Backend.Compare)
		s.Ejected = gone
		s.Backends = slices.DeleteFunc(slices.Clone(s.Backends), func(b lb.Backend) bool {
			_, found := slices.BinarySearchFunc(gone, b, lb.Backend.Compare)
			return found
		})
	}
	return out
}

// Next returns the end of the earliest ejection after now, when the
// state must be applied again; false when nothing is ejected.
func (d *Detector) Next(now time.Time) (time.Time, bool) {
	var next time.Time
	for _, e := range d.entries {
		if e.Until.After(now) && (next.IsZero() || e.Until.Before(next)) {
			next = e.Until
		}
	}
	return next, !next.IsZero()
}

// Forget drops what is known of backends that are not ejected and either
// have been back for MaxEjection (their multiplier starts again) or are
// no longer a member of any frontend (present reports which are). It
// returns the backends it dropped.
func (d *Detector) Forget(now time.Time, present func(lb.Backend) bool) []lb.Backend {
	var dropped []lb.Backend
	for b, e := range d.entries {
		if !present(b) || (!e.Until.After(now) && now.Sub(e.Until) >= d.cfg.MaxEjection) {
			delete(d.entries, b)
			dropped = append(dropped, b)
		}
	}
	return dropped
}

// Entries returns a copy of what the Detector knows, to keep across a
// restart of the agent (Restore takes it back).
func (d *Detector) Entries() map[lb.Backend]Entry {
	out := make(map[lb.Backend]Entry, len(d.entries))
	for b, e := range d.entries {
		out[b] = *e
	}
	return out
}

// Len is how many backends the Detector knows of, ejected or not.
func (d *Detector) Len() int { return len(d.entries) }

// Entry returns what the Detector knows of b.
func (d *Detector) Entry(b lb.Backend) (Entry, bool) {
	if e := d.entries[b]; e != nil {
		return *e, true
	}
	return Entry{}, false
}

// Restore sets what is known of b, as Entries returned it before; an
// ejection that would end more than MaxEjection after now (a record
// made under a longer maximum, or a clock that went back) ends then.
func (d *Detector) Restore(b lb.Backend, e Entry, now time.Time) {
	if e.Ejections < 1 {
		return
	}
	if limit := now.Add(d.cfg.MaxEjection); e.Until.After(limit) {
		e.Until = limit
	}
	d.entries[b] = &e
}

// Ejected returns the backends ejected at now with their end times.
func (d *Detector) Ejected(now time.Time) map[lb.Backend]time.Time {
	out := map[lb.Backend]time.Time{}
	for b, e := range d.entries {
		if e.Until.After(now) {
			out[b] = e.Until
		}
	}
	return out
}

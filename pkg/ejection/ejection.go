// Package ejection runs passive outlier ejection in the agent: it takes
// the datapath's failure reports (read from the ring buffer the sock_ops
// program writes), decides with an outlier.Detector on the syncer's
// goroutine as the syncer's Adjuster, so that an ejection is an ordinary
// republish through plan and write, and records its decisions in the
// pinned ejection map, so that a restarted agent goes on where the last
// one stopped.
package ejection

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/outlier"
	"github.com/socklb/socklb/pkg/reconciler"
)

// Report is one failure report of the datapath: a TCP connect through
// frontend RevNAT to Backend failed, and the backend's failures in a row
// reached the threshold.
type Report struct {
	RevNAT  maps.RevNATID
	Backend maps.BackendID
}

// Options configure an Ejector.
type Options struct {
	Config outlier.Config
	// Store, if set, keeps the ejections across restarts.
	Store maps.Ejections
	// Trigger asks for a sync that skips the rate limit
	// (reconciler.Syncer.TriggerNow).
	Trigger func()
	// OnEject, if set, is called for every ejection (a metric).
	OnEject func(service types.NamespacedName, b lb.Backend)
	Logger  *slog.Logger
}

// Ejected is one backend ejected now, as inspect and the metrics show it.
type Ejected struct {
	Backend   lb.Backend
	Until     time.Time
	Ejections int
	// Services are those with a frontend that leaves it out now.
	Services []types.NamespacedName
}

// forgetEvery bounds how often Adjust looks for backends to forget: that
// takes a pass over every frontend's backends.
const forgetEvery = 10 * time.Second

// Ejector is the agent's outlier ejection. Report may be called from any
// goroutine; Adjust is the syncer's.
type Ejector struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	pending map[Report]bool
	// decided are the backends of the reports Adjust took, for the
	// datapath to stop avoiding once the sync is written.
	decided []maps.BackendID

	det        *outlier.Detector
	restored   bool
	written    bool // a sync has been written since the start
	lastForget time.Time
	// warned is when each backend was last reported but kept for the
	// maximum share, so that the warning comes once per ejection time.
	warned map[lb.Backend]time.Time
	now    atomic.Pointer[[]Ejected]
}

// New returns an Ejector with nothing ejected; the first Adjust restores
// what Store holds.
func New(opts Options) *Ejector {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Trigger == nil {
		opts.Trigger = func() {}
	}
	return &Ejector{opts: opts, log: opts.Logger, pending: map[Report]bool{},
		det: outlier.New(opts.Config), warned: map[lb.Backend]time.Time{}}
}

// Report queues a failure report and asks for a sync. Reports of the same
// frontend and backend before that sync count once.
func (e *Ejector) Report(r Report) {
	e.mu.Lock()
	e.pending[r] = true
	e.mu.Unlock()
	e.opts.Trigger()
}

func (e *Ejector) hasPending() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending) > 0
}

func (e *Ejector) take() []Report {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.pending) == 0 {
		return nil
	}
	out := make([]Report, 0, len(e.pending))
	for r := range e.pending {
		out = append(out, r)
	}
	clear(e.pending)
	slices.SortFunc(out, func(a, b Report) int { // a stable order for the logs
		if a.RevNAT != b.RevNAT {
			return int(a.RevNAT) - int(b.RevNAT)
		}
		return int(a.Backend) - int(b.Backend)
	})
	return out
}

// Ejected returns the backends that some Service left out at the last
// sync. Safe for concurrent use.
func (e *Ejector) Ejected() []Ejected {
	if p := e.now.Load(); p != nil {
		return *p
	}
	return nil
}

var _ reconciler.Adjuster = (*Ejector)(nil)

// Adjust decides on the pending reports and returns state with the
// ejected backends left out, and when to adjust again (the next end of an
// ejection).
func (e *Ejector) Adjust(state lb.State, ids reconciler.IDs, now time.Time) (lb.State, time.Time) {
	if !e.restored {
		e.restore(now)
	}
	// Until a sync has been written, the reconciler may not know the
	// ids the reports name (a restarted agent reads the reports that
	// waited in the pinned ring buffer first): they wait too.
	var reports []Report
	if e.written {
		reports = e.take()
	}
	for _, r := range reports {
		e.decide(r, state, ids, now)
		if !slices.Contains(e.decided, r.Backend) {
			e.decided = append(e.decided, r.Backend)
		}
	}
	if e.det.Len() > 0 && now.Sub(e.lastForget) >= forgetEvery {
		e.forget(state, now)
	}
	out := e.det.Apply(state, now)
	e.publish(out, now)
	next, _ := e.det.Next(now)
	return out, next
}

// Applied tells the datapath, once the sync that carries the decisions on
// the reported backends is written, that it need not avoid them any
// more. After a failed write they stay avoided (for at most the
// datapath's window) until a sync succeeds.
func (e *Ejector) Applied(err error) {
	if err != nil {
		return
	}
	if !e.written {
		e.written = true
		if e.hasPending() {
			e.opts.Trigger() // the reports that waited for the first write
		}
	}
	if len(e.decided) == 0 {
		return
	}
	if e.opts.Store != nil {
		if err := e.opts.Store.Decided(e.decided); err != nil {
			e.log.Warn("cannot tell the datapath the ejection decisions are written; it stops avoiding the backends by itself within a second",
				"error", err)
		}
	}
	e.decided = e.decided[:0]
}

// restore takes back what a previous agent recorded.
func (e *Ejector) restore(now time.Time) {
	e.restored = true
	if e.opts.Store == nil {
		return
	}
	all, err := e.opts.Store.Ejections()
	if err != nil {
		e.log.Warn("cannot read the recorded ejections; starting with none", "error", err)
		return
	}
	for b, rec := range all {
		if b.Proto != maps.ProtoTCP {
			continue
		}
		e.det.Restore(lb.Backend{Addr: b.Addr, Port: b.Port},
			outlier.Entry{Ejections: int(rec.Ejections), At: rec.At, Until: rec.Until}, now)
	}
	if len(all) > 0 {
		e.log.Info("restored recorded ejections", "backends", len(all))
	}
}

// decide turns one report into an ejection, if the rule allows it.
func (e *Ejector) decide(r Report, state lb.State, ids reconciler.IDs, now time.Time) {
	fe, ok := ids.FrontendOf(r.RevNAT)
	if !ok {
		return // the frontend is gone since the failure
	}
	mb, ok := ids.BackendOf(r.Backend)
	if !ok {
		return
	}
	front := lb.Frontend{Addr: fe.Addr, Port: fe.Port, Proto: lb.Proto(fe.Proto)}
	i, found := slices.BinarySearchFunc(state.Services, front, func(s lb.Service, f lb.Frontend) int {
		return s.Frontend.Compare(f)
	})
	if !found {
		return
	}
	s := &state.Services[i]
	if !e.det.Enabled(s) {
		return
	}
	b := lb.Backend{Addr: mb.Addr, Port: mb.Port}
	until, ejected := e.det.Failed(b, s.Backends, now)
	if !ejected {
		if _, already := e.det.EjectedUntil(b, now); already || !slices.Contains(s.Backends, b) {
			return
		}
		if last, ok := e.warned[b]; !ok || now.Sub(last) >= e.opts.Config.BaseEjection {
			e.warned[b] = now
			e.log.Warn("backend keeps failing connects but is not ejected: the Service's maximum share is ejected already",
				"service", s.Name.String(), "backend", b.String(), "max_share", e.opts.Config.MaxShare)
		}
		return
	}
	entry, _ := e.det.Entry(b)
	e.log.Info("backend ejected after consecutive failed connects", "service", s.Name.String(),
		"frontend", front.String(), "backend", b.String(), "until", until.Format(time.RFC3339),
		"ejection_time", until.Sub(now).Round(time.Millisecond), "ejections", entry.Ejections)
	if e.opts.OnEject != nil {
		e.opts.OnEject(s.Name, b)
	}
	if e.opts.Store != nil {
		err := e.opts.Store.PutEjection(maps.Backend{Addr: b.Addr, Port: b.Port, Proto: maps.ProtoTCP},
			maps.Ejection{Ejections: uint32(entry.Ejections), At: entry.At, Until: entry.Until})
		if err != nil {
			e.log.Warn("cannot record the ejection; a restarted agent will not know it", "backend", b.String(), "error", err)
		}
	}
}

// forget drops the backends that no enabled frontend lists any more, and
// those back long enough for their multiplier to start again.
func (e *Ejector) forget(state lb.State, now time.Time) {
	e.lastForget = now
	known := e.det.Entries()
	present := make(map[lb.Backend]bool, len(known))
	for i := range state.Services {
		s := &state.Services[i]
		if !e.det.Enabled(s) {
			continue
		}
		for _, b := range s.Backends {
			if _, ok := known[b]; ok {
				present[b] = true
			}
		}
	}
	for _, b := range e.det.Forget(now, func(b lb.Backend) bool { return present[b] }) {
		delete(e.warned, b)
		if e.opts.Store != nil {
			if err := e.opts.Store.DeleteEjection(maps.Backend{Addr: b.Addr, Port: b.Port, Proto: maps.ProtoTCP}); err != nil {
				e.log.Warn("cannot delete a recorded ejection", "backend", b.String(), "error", err)
			}
		}
	}
}

// publish keeps the ejected backends for Ejected and logs those that
// came back.
func (e *Ejector) publish(out lb.State, now time.Time) {
	prev := e.Ejected()
	ejected := e.det.Ejected(now)
	if len(ejected) == 0 && len(prev) == 0 {
		return
	}
	bySvc := map[lb.Backend][]types.NamespacedName{}
	if len(ejected) > 0 {
		for i := range out.Services {
			s := &out.Services[i]
			for _, b := range s.Ejected {
				if !slices.Contains(bySvc[b], s.Name) {
					bySvc[b] = append(bySvc[b], s.Name)
				}
			}
		}
	}
	// A backend the detector holds but no Service leaves out now (its
	// Services turned detection off, or left it) is not ejected from
	// anything: listing it would tell the operator of an ejection the
	// datapath does not make. The detector keeps it until forget, so
	// that its ejection time runs on if a Service turns detection on.
	list := make([]Ejected, 0, len(ejected))
	for b, until := range ejected {
		if len(bySvc[b]) == 0 {
			continue
		}
		entry, _ := e.det.Entry(b)
		list = append(list, Ejected{Backend: b, Until: until, Ejections: entry.Ejections, Services: bySvc[b]})
	}
	slices.SortFunc(list, func(a, b Ejected) int { return a.Backend.Compare(b.Backend) })
	for _, p := range prev {
		if !slices.ContainsFunc(list, func(n Ejected) bool { return n.Backend == p.Backend }) {
			e.log.Info("ejected backend re-admitted", "backend", p.Backend.String(), "ejections", p.Ejections)
		}
	}
	e.now.Store(&list)
}

package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// Source is where the desired objects come from: the file source or the
// Kubernetes informers. It only records changes and calls Syncer.Trigger.
type Source interface {
	// Input returns the current objects. Nobody modifies them, the
	// source included: a changed object is a new one (as in an informer's
	// cache), which is what lets lb.Computer redo only what changed.
	Input() lb.Input
	// HasSynced is true once the source holds a complete view.
	HasSynced() bool
}

// ChangeTracker is a Source that records which Services changed (the
// Kubernetes source, from its informers' handlers). With it a sync reads
// and computes the changed Services alone, and the reconciler looks at
// their frontends alone; every periodic reconciliation, and a sync after a
// failure, still reads everything.
type ChangeTracker interface {
	Source
	// Changed returns the Services whose Service or EndpointSlices
	// changed since the last call, and forgets them; all is true when it
	// lost count.
	Changed() (keys []types.NamespacedName, all bool)
	// Objects returns the current objects of one Service key, as
	// lb.ObjectsOf.
	Objects(key types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice)
	// Node is what Input would say of the node.
	Node() lb.NodeInfo
}

// SyncerOptions tune how often the maps are written.
type SyncerOptions struct {
	// MinInterval and Burst bound the rate of syncs (kube-proxy's
	// minSyncPeriod): bursts of changes collapse into one sync.
	MinInterval time.Duration
	Burst       int
	// RetryBase and RetryMax bound the backoff after a failed sync.
	RetryBase, RetryMax time.Duration
	// ReconcileInterval is how often a sync rereads the maps, compares
	// them with what was written and repairs drift, even with no change
	// (kube-proxy's sync period). Zero means never.
	ReconcileInterval time.Duration
	// OnSync, if set, is called after every sync attempt with the time it
	// took (model and map writes).
	OnSync func(took time.Duration, st Stats, err error)
	// OnDeparted, if set, is called after a successful sync in which
	// backends left frontends, e.g. to queue the destruction of their
	// sockets. It must not block: the next map write waits for it.
	OnDeparted func([]maps.Departure)
	// Node is this node as configured; a source that knows more (the
	// Kubernetes source reads the Node's zone) overrides it.
	Node lb.NodeInfo
	// ServiceSelector limits which Services are handled; nil = all.
	ServiceSelector labels.Selector
	// Adjuster, if set, adjusts each computed state before it is
	// written (outlier ejection).
	Adjuster Adjuster
	// Defaults are what Services without annotations get.
	Defaults lb.Defaults
}

// Syncer runs the reconciler whenever a source changes, never before every
// source has synced, at a bounded rate, retrying failures with backoff.
type Syncer struct {
	rec     *Reconciler
	model   *lb.Computer
	sources []Source
	opts    SyncerOptions
	log     *slog.Logger
	queue   workqueue.TypedRateLimitingInterface[string]
	limiter *rate.Limiter
	synced  atomic.Bool
	// firstSync is closed after the first successful sync.
	firstSync chan struct{}
	// inSync is true while the last sync wrote everything it planned.
	inSync atomic.Bool
	// reconcileDue asks the next sync for a full reconciliation.
	reconcileDue atomic.Bool
	// rereadTook is how long the last full reconciliation took (ns).
	rereadTook atomic.Int64
	over       atomic.Pointer[[]OverCapacity]
	facts      atomic.Pointer[lb.Facts]

	lastWarnings []lb.Warning
	lastOver     []OverCapacity
	// adjusted is set when the Adjuster changed the last sync's state:
	// the frontends it changed are not in the model's list of changes.
	adjusted bool
	// wake triggers the sync at which the Adjuster asked to be redone.
	wake *time.Timer
	// urgent limits the syncs that skip limiter.
	urgent *rate.Limiter
}

const (
	syncKey = "sync"
	// urgentKey is a sync that skips the rate limit (TriggerNow).
	urgentKey = "urgent"
	// urgentEvery and urgentBurst bound the syncs that skip it.
	urgentEvery = 20 * time.Millisecond
	urgentBurst = 5
)

// NewSyncer returns a Syncer; call Run to start it.
func NewSyncer(rec *Reconciler, sources []Source, opts SyncerOptions, log *slog.Logger) *Syncer {
	if opts.Burst < 1 {
		opts.Burst = 1
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = 100 * time.Millisecond
	}
	if opts.RetryMax < opts.RetryBase {
		opts.RetryMax = 30 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	limit := rate.Inf
	if opts.MinInterval > 0 {
		limit = rate.Every(opts.MinInterval)
	}
	return &Syncer{
		firstSync: make(chan struct{}),
		rec:       rec,
		model:     lb.NewComputer(),
		sources:   sources,
		opts:      opts,
		log:       log,
		limiter:   rate.NewLimiter(limit, opts.Burst),
		urgent:    rate.NewLimiter(rate.Every(urgentEvery), urgentBurst),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](opts.RetryBase, opts.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "socklb-sync"},
		),
	}
}

// Trigger asks for a sync. It never blocks; many triggers before the sync
// runs give one sync. The rate limit applies to syncs, not to triggers: a
// burst of a thousand informer events must not book a thousand future
// slots.
func (s *Syncer) Trigger() {
	s.queue.Add(syncKey)
}

// TriggerNow asks for a sync that does not wait for the rate limit: an
// outlier ejection must reach the kernel within 100 ms of the failure
// that decided it, whatever --min-sync says. Failure reports can come as
// fast as clients fail, though (a lone backend that is down, which is
// never ejected), so these syncs have a limit of their own
// (urgentEvery, urgentBurst); beyond it they wait for the normal one.
func (s *Syncer) TriggerNow() {
	s.queue.Add(urgentKey)
}

// HasSynced is true once the maps hold a full sync of every source.
func (s *Syncer) HasSynced() bool { return s.synced.Load() }

// Synced is closed once the maps hold a full sync of every source.
func (s *Syncer) Synced() <-chan struct{} { return s.firstSync }

// InSync is true while the last sync succeeded: the maps hold what the
// agent wants, but for what OverCapacity lists.
func (s *Syncer) InSync() bool { return s.inSync.Load() }

// OverCapacity returns the frontends that the last sync found no room
// for. Safe for concurrent use.
func (s *Syncer) OverCapacity() []OverCapacity {
	if p := s.over.Load(); p != nil {
		return *p
	}
	return nil
}

// Run syncs until ctx is done.
func (s *Syncer) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		s.queue.ShutDown()
	}()
	s.Trigger()
	if s.opts.ReconcileInterval > 0 {
		go s.reconcileEvery(ctx)
	}
	for {
		key, quit := s.queue.Get()
		if quit {
			return nil
		}
		// Changes that arrive while we wait join this sync (the queue
		// holds the key once).
		if key != urgentKey || !s.urgent.Allow() {
			if err := s.limiter.Wait(ctx); err != nil {
				s.queue.Done(key)
				return nil
			}
		}
		err := s.syncOnce()
		if err != nil {
			s.log.Error("sync failed; retrying with a full resync", "error", err,
				"attempt", s.queue.NumRequeues(key)+1)
			s.queue.AddRateLimited(key)
		} else {
			s.queue.Forget(key)
		}
		s.queue.Done(key)
	}
}

func (s *Syncer) syncOnce() error {
	for _, src := range s.sources {
		if !src.HasSynced() {
			// The source triggers again once it has synced; programming
			// a partial view would drop live services.
			s.log.Debug("sync deferred: a source has not synced yet")
			return nil
		}
	}
	// Take the changes before reading any object: a change recorded
	// after this is seen again at the next sync, however it is read now.
	keys, all := s.takeChanges()
	settings, tracked := s.settings()
	due := s.reconcileDue.Swap(false)
	if due {
		s.rec.Reconcile()
	}
	start := time.Now()
	var state lb.State
	var warnings []lb.Warning
	ok := false
	if tracked && !all && !due {
		state, warnings, ok = s.model.ComputeChanged(settings, keys, s.objects)
	}
	if !ok {
		var in lb.Input
		if in, ok = s.Input(); !ok {
			return nil // as above: cannot happen once synced
		}
		state, warnings = s.model.Compute(in)
	}
	changed, changedAll := s.model.Changed()
	if !slices.Equal(warnings, s.lastWarnings) {
		for _, w := range warnings {
			s.log.Warn("object not fully used", "object", w.Object, "reason", w.Reason)
		}
		s.lastWarnings = warnings
	}
	adjusted := false
	if s.opts.Adjuster != nil {
		var next time.Time
		before := state.Services
		state, next = s.opts.Adjuster.Adjust(state, s.rec, time.Now())
		s.wakeAt(next)
		adjusted = len(state.Services) != len(before) ||
			len(before) > 0 && &state.Services[0] != &before[0]
	}
	// What the Adjuster changed, now or in the last sync, is not in the
	// model's list.
	changedAll = changedAll || adjusted || s.adjusted
	s.adjusted = adjusted
	st, err := s.rec.ApplyChanged(state, changed, changedAll)
	if s.opts.Adjuster != nil {
		s.opts.Adjuster.Applied(err)
	}
	if s.opts.OnSync != nil {
		s.opts.OnSync(time.Since(start), st, err)
	}
	if due {
		s.rereadTook.Store(int64(time.Since(start)))
	}
	if d := st.Drift; d.Total() > 0 {
		s.log.Warn("the maps differed from what the agent wrote; repairing", "drift", d.String(),
			"repaired", err == nil)
	}
	if err != nil {
		// The retry is a full resync: the reconciler rereads the maps,
		// and the model forgets what it computed.
		s.inSync.Store(false)
		s.model.Reset()
		return fmt.Errorf("apply: %w", err)
	}
	s.inSync.Store(true)
	s.reportOverCapacity(st.OverCapacity)
	s.keepFacts(state, st.OverCapacity, adjusted)
	if len(st.Departed) > 0 && s.opts.OnDeparted != nil {
		s.opts.OnDeparted(st.Departed)
	}
	first := !s.synced.Swap(true)
	if first {
		close(s.firstSync)
	}
	if first || st.Published+st.Deleted+st.BackendsAdded+st.BackendsRemoved > 0 {
		s.log.Info("maps synced", "first", first, "took", time.Since(start).Round(time.Microsecond),
			"services", st.Services, "backends", st.Backends, "published", st.Published,
			"deleted", st.Deleted, "backends_added", st.BackendsAdded,
			"backends_removed", st.BackendsRemoved, "skipped", st.Skipped)
	}
	return nil
}

// maxReconcileShare is the most of a core the periodic full
// reconciliations may use: after one that took d, the next waits at least
// d / maxReconcileShare, however short ReconcileInterval is. Reading back
// the maps of 100 000 Services takes seconds, and once a minute that
// would cost more than the rest of an idle agent.
const maxReconcileShare = 0.01

// reconcileWait is the time until the next full reconciliation, after one
// that took took.
func reconcileWait(interval, took time.Duration) time.Duration {
	return max(interval, time.Duration(float64(took)/maxReconcileShare))
}

// reconcileEvery asks for a full reconciliation every ReconcileInterval,
// or less often when they are slow (maxReconcileShare).
func (s *Syncer) reconcileEvery(ctx context.Context) {
	stretched := false
	for {
		wait := reconcileWait(s.opts.ReconcileInterval, time.Duration(s.rereadTook.Load()))
		if now := wait > s.opts.ReconcileInterval; now != stretched {
			stretched = now
			s.log.Info("full reconciliations spaced to stay under their share of a core",
				"interval", wait.Round(time.Second), "configured", s.opts.ReconcileInterval,
				"last_took", time.Duration(s.rereadTook.Load()).Round(time.Millisecond), "share", maxReconcileShare)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			s.reconcileDue.Store(true)
			s.Trigger()
		}
	}
}

// reportOverCapacity logs the frontends without room when that list
// changes, naming each (up to a bound), and keeps it for OverCapacity.
func (s *Syncer) reportOverCapacity(over []OverCapacity) {
	if slices.Equal(over, s.lastOver) {
		return
	}
	s.lastOver = over
	s.over.Store(&over)
	if len(over) == 0 {
		s.log.Info("every frontend fits in the maps again")
		return
	}
	const shown = 20
	var names []string
	stale := 0
	for i, o := range over {
		if o.Stale {
			stale++
		}
		if i < shown {
			names = append(names, fmt.Sprintf("%s %s (%d backends)", o.Name, o.Frontend, o.Backends))
		}
	}
	s.log.Error("the BPF maps are full: frontends not programmed (raise --service-map-entries or --backend-map-entries)",
		"frontends", len(over), "kept_older_version", stale, "first", names)
}

// Input merges the sources' current objects into the model's input;
// false while a source has not synced. Safe for concurrent use, as the
// sources' Input is.
func (s *Syncer) Input() (lb.Input, bool) {
	for _, src := range s.sources {
		if !src.HasSynced() {
			return lb.Input{}, false
		}
	}
	in := lb.Input{Node: s.opts.Node, ServiceSelector: s.opts.ServiceSelector, Defaults: s.opts.Defaults}
	for _, src := range s.sources {
		i := src.Input()
		in.Services = append(in.Services, i.Services...)
		in.EndpointSlices = append(in.EndpointSlices, i.EndpointSlices...)
		mergeNode(&in.Node, i.Node)
	}
	return in, true
}

// mergeNode fills in what from knows of the node: node facts come from
// several sources (configuration, the Node object, netlink).
func mergeNode(into *lb.NodeInfo, from lb.NodeInfo) {
	if from.Name != "" {
		into.Name = from.Name
	}
	if from.Zone != "" {
		into.Zone = from.Zone
	}
	if from.Addresses != nil {
		into.Addresses = from.Addresses
	}
}

// takeChanges drains the change trackers.
func (s *Syncer) takeChanges() (keys []types.NamespacedName, all bool) {
	for _, src := range s.sources {
		if t, ok := src.(ChangeTracker); ok {
			k, a := t.Changed()
			keys = append(keys, k...)
			all = all || a
		}
	}
	return keys, all
}

// settings is the model's input without the objects of the change
// trackers; tracked is false when another source has objects, which
// then must all be read.
func (s *Syncer) settings() (in lb.Input, tracked bool) {
	in = lb.Input{Node: s.opts.Node, ServiceSelector: s.opts.ServiceSelector, Defaults: s.opts.Defaults}
	tracked = true
	for _, src := range s.sources {
		if t, ok := src.(ChangeTracker); ok {
			mergeNode(&in.Node, t.Node())
			continue
		}
		i := src.Input()
		if len(i.Services)+len(i.EndpointSlices) > 0 {
			tracked = false
		}
		mergeNode(&in.Node, i.Node)
	}
	return in, tracked
}

// objects returns the change trackers' objects of key.
func (s *Syncer) objects(key types.NamespacedName) (svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice) {
	for _, src := range s.sources {
		if t, ok := src.(ChangeTracker); ok {
			sv, sl := t.Objects(key)
			svcs = append(svcs, sv...)
			slices = append(slices, sl...)
		}
	}
	return svcs, slices
}

// Facts returns what the last successful sync wrote besides the model's
// state: the members ejection left out and the frontends without room.
// Safe for concurrent use.
func (s *Syncer) Facts() lb.Facts {
	if p := s.facts.Load(); p != nil {
		return *p
	}
	return lb.Facts{}
}

// keepFacts records the facts of a successful sync of state; only an
// adjusted state has ejected members.
func (s *Syncer) keepFacts(state lb.State, over []OverCapacity, adjusted bool) {
	f := lb.Facts{OverCapacity: make(map[lb.Frontend]bool, len(over))}
	for _, o := range over {
		f.OverCapacity[lb.Frontend{Addr: o.Frontend.Addr, Port: o.Frontend.Port, Proto: lb.Proto(o.Frontend.Proto)}] = o.Stale
	}
	if adjusted {
		for _, svc := range state.Services {
			if len(svc.Ejected) > 0 {
				if f.Ejected == nil {
					f.Ejected = make(map[lb.Frontend][]lb.Backend)
				}
				f.Ejected[svc.Frontend] = svc.Ejected
			}
		}
	}
	s.facts.Store(&f)
}

// wakeAt arranges a sync at t (none when t is zero), replacing the one
// arranged before.
func (s *Syncer) wakeAt(t time.Time) {
	if s.wake != nil {
		s.wake.Stop()
	}
	if t.IsZero() {
		return
	}
	s.wake = time.AfterFunc(time.Until(t), s.TriggerNow)
}

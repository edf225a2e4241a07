// Package reconciler is socklb's single writer to the BPF maps. Each sync
// runs model → plan → write: it diffs the model's desired state against
// what it last wrote (restored from the pinned maps at start, and reread
// from them at every periodic reconciliation, which repairs drift), makes
// a plan that fits the maps' sizes (makePlan, a pure function), and writes
// it in an order that never lets a connect see a frontend without its
// backends. Syncer drives it from sources with rate limiting, backoff,
// periodic full reconciliation and full resyncs after failures.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// written is what the reconciler knows to be in the maps for one frontend.
type written struct {
	revNAT   maps.RevNATID
	name     string // namespace/name:port
	service  string // namespace/name
	flags    uint16
	affinity uint32
	backends []maps.BackendID
	// held are members that outlier ejection keeps out of backends:
	// referenced, so that they stay in the backend map, but in no slot.
	held []maps.BackendID
	// damaged: the kernel holds this frontend incompletely (read back
	// with a missing slot, member, name or counter); republish it.
	damaged bool
}

// Reconciler owns the maps' content. It is not safe for concurrent use:
// there is one writer by design. Programmed is safe to call from any
// goroutine.
type Reconciler struct {
	maps maps.Maps
	log  *slog.Logger

	services map[maps.Frontend]written
	backends map[maps.Backend]maps.BackendID
	ids      map[maps.BackendID]maps.Backend
	revNATs  map[maps.RevNATID]maps.Frontend // the frontend of each id
	// refs counts the frontends in services that list each backend, so
	// that a sync finds the backends it may delete without a pass over
	// every frontend. unused holds those whose count may have fallen to 0.
	refs   map[maps.BackendID]int
	unused map[maps.BackendID]bool
	// served counts the frontends of each Service in services.
	served map[string]int
	// vips are the addresses in the cluster IP map; vipRefs counts the
	// ClusterIP frontends in services of each address; vipCheck are the
	// addresses the next plan checks whatever it writes (see placeVIPs).
	vips     map[netip.Addr]bool
	vipRefs  map[netip.Addr]int
	vipCheck map[netip.Addr]bool
	// used is what services and ids occupy in the maps, limit the maps'
	// sizes, reserve the room kept free for republishing (see planInput).
	used    usage
	limit   usage
	reserve int

	// applied is the desired Services of the last successful Apply,
	// sorted by frontend, one per frontend: a desired Service equal to its
	// entry needs no conversion and no write, and both lists being sorted,
	// one pass in step finds what changed. It is valid while complete;
	// Restore clears complete, and the Apply after a Restore compares
	// every desired Service with services. spare is the buffer the next
	// applied is built in, so that a sync allocates no new list.
	applied, spare []appliedService
	complete       bool
	skipped        int // entries of applied that toMaps rejected
	overs          int // entries of applied that had no room

	nextBackend maps.BackendID
	nextRevNAT  maps.RevNATID

	// restored is false until bookkeeping matches the maps: at start and
	// after any failed write the next Apply first rebuilds it from the
	// maps.
	restored bool
	// verify: a reconciliation is due; the next Apply rereads the maps
	// and compares them with the bookkeeping, which it rebuilds only if
	// they differ.
	verify bool
	// reread is set once bookkeeping was restored before: the next
	// Restore compares what it reads with it and reports the drift.
	reread bool

	frontendsNow, backendsNow atomic.Int64
}

// New returns a Reconciler that writes through m, within m's capacity (a
// size of 0 counts as unbounded).
func New(m maps.Maps, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := m.Capacity()
	size := func(n int) int {
		if n <= 0 {
			return math.MaxInt
		}
		return n
	}
	// The cluster IP map holds an address only while it has a published
	// frontend (placeVIPs): limiting the frontends to its size keeps it
	// from ever being full.
	return &Reconciler{maps: m, log: log, limit: usage{
		entries: size(c.Services), members: size(c.Members), backends: size(c.Backends),
		frontends: min(size(c.Counters), size(c.Names), size(c.VIPs)),
	}}
}

// Stats says what one Apply changed.
type Stats struct {
	Services, Backends             int // programmed after the sync
	Published, Deleted             int // frontends written or removed
	BackendsAdded, BackendsRemoved int
	Skipped                        int // frontends the dataplane cannot program
	// VIPs are the cluster IPs in the map after the sync, VIPsAdded and
	// VIPsDeleted what it wrote there.
	VIPs, VIPsAdded, VIPsDeleted int
	// OverCapacity lists the frontends the maps have no room for, sorted
	// by Service and frontend.
	OverCapacity []OverCapacity
	// Departed lists the backends that left a frontend in this sync.
	Departed []maps.Departure
	// Drift is what a reconciliation found the kernel to differ in from
	// what this reconciler had written, before it repaired it.
	Drift Drift
}

// Programmed returns the frontends and backends the maps hold now, as
// far as the writes so far tell; safe for concurrent use.
func (r *Reconciler) Programmed() (frontends, backends int) {
	return int(r.frontendsNow.Load()), int(r.backendsNow.Load())
}

// Reconcile makes the next Apply reread the maps, compare them with what
// was written and repair what differs (periodic full reconciliation).
func (r *Reconciler) Reconcile() { r.verify = true }

// Restore rebuilds the bookkeeping from the maps, so that a restarted agent
// keeps ids stable and rewrites only what changed while it was away. A
// frontend the kernel holds damaged is kept, marked for republishing.
func (r *Reconciler) Restore() error {
	_, err := r.restore()
	return err
}

func (r *Reconciler) restore() (Drift, error) {
	svcs, err := r.maps.Services()
	if err != nil {
		return Drift{}, fmt.Errorf("restore: %w", err)
	}
	bes, err := r.maps.Backends()
	if err != nil {
		return Drift{}, fmt.Errorf("restore: %w", err)
	}
	pruned, err := r.maps.Prune()
	if err != nil {
		return Drift{}, fmt.Errorf("restore: %w", err)
	}
	vips, err := r.maps.VIPs()
	if err != nil {
		return Drift{}, fmt.Errorf("restore: %w", err)
	}
	var drift Drift
	if r.reread {
		drift = compareWithKernel(r.services, r.ids, svcs, bes)
		drift.MissingVIPs, drift.UnknownVIPs = compareVIPs(r.vips, vips)
	} else {
		for _, s := range svcs {
			if len(s.Damage) > 0 {
				drift.DamagedFrontends++
			}
		}
	}
	drift.StrayEntries = pruned
	verifying := r.restored && r.verify
	r.verify = false
	if verifying && drift.Total() == 0 {
		// The maps hold what the bookkeeping (trusted: no write failed
		// since it was built) says: rebuilding it would only make the
		// next Apply plan every frontend again.
		r.log.Debug("maps read back: no drift", "services", len(svcs), "backends", len(bes), "cluster_ips", len(vips))
		return drift, nil
	}
	r.services = make(map[maps.Frontend]written, len(svcs))
	r.backends = make(map[maps.Backend]maps.BackendID, len(bes))
	r.ids = make(map[maps.BackendID]maps.Backend, len(bes))
	r.revNATs = make(map[maps.RevNATID]maps.Frontend, len(svcs))
	r.refs = make(map[maps.BackendID]int, len(bes))
	r.unused = make(map[maps.BackendID]bool)
	r.served = make(map[string]int)
	r.vips = make(map[netip.Addr]bool, len(vips))
	r.vipRefs = make(map[netip.Addr]int, len(vips))
	for _, a := range vips {
		r.vips[a] = true
	}
	r.used = usage{backends: len(bes)}
	r.complete = false
	// The next ids only grow in a process: an id a reread finds free may
	// still be on sockets (their connect outcomes, their departures), so
	// it is not given out again until the counter wraps.
	for id, b := range bes {
		r.backends[b] = id
		r.ids[id] = b
		r.nextBackend = max(r.nextBackend, id)
	}
	for _, s := range svcs {
		service, _, _ := strings.Cut(s.Name, ":")
		w := written{
			revNAT: s.RevNATID, name: s.Name, service: service, flags: s.Flags,
			affinity: s.AffinityTimeout, backends: s.Backends, damaged: len(s.Damage) > 0,
		}
		for _, id := range s.Backends {
			if _, ok := r.ids[id]; !ok {
				w.damaged = true // a slot names a backend the map lacks
			}
		}
		r.services[s.Frontend] = w
		r.revNATs[s.RevNATID] = s.Frontend
		r.nextRevNAT = max(r.nextRevNAT, s.RevNATID)
		r.ref(s.Backends)
		r.account(s.Frontend, w, 1)
		r.reserve = max(r.reserve, len(s.Backends))
	}
	for id := range r.ids {
		if r.refs[id] == 0 {
			r.unused[id] = true
		}
	}
	// What the cluster IP map holds was read, not written: the next plan
	// checks every address against its frontends.
	r.vipCheck = make(map[netip.Addr]bool, len(r.vips)+len(r.vipRefs))
	for a := range r.vips {
		r.vipCheck[a] = true
	}
	for a := range r.vipRefs {
		r.vipCheck[a] = true
	}
	first := !r.reread
	r.restored, r.reread = true, true
	r.count()
	if pruned > 0 {
		r.log.Info("pruned stale map entries", "entries", pruned)
	}
	// Once at start; the periodic rereads log only the drift they find.
	level := slog.LevelDebug
	if first {
		level = slog.LevelInfo
	}
	r.log.Log(context.Background(), level, "restored state from maps", "services", len(svcs), "backends", len(bes),
		"cluster_ips", len(vips))
	return drift, nil
}

// account adds (sign 1) or removes (sign -1) w, the frontend fe, from the
// usage and the counts of frontends per Service and per cluster IP.
func (r *Reconciler) account(fe maps.Frontend, w written, sign int) {
	if isClusterIP(w.flags) {
		if r.vipRefs[fe.Addr] += sign; r.vipRefs[fe.Addr] <= 0 {
			delete(r.vipRefs, fe.Addr)
		}
	}
	k := len(w.backends)
	r.used.entries += sign * (1 + k)
	r.used.members += sign * k
	r.used.frontends += sign
	if r.served[w.service] += sign; r.served[w.service] <= 0 {
		delete(r.served, w.service)
	}
}

func (r *Reconciler) count() {
	r.frontendsNow.Store(int64(len(r.services)))
	r.backendsNow.Store(int64(len(r.ids)))
}

// Apply makes the maps equal to desired, as far as they have room (see
// makePlan; what does not fit is in Stats.OverCapacity, and is not an
// error). On error the maps hold a consistent mix of old and new state
// and the next Apply starts with a full resync.
//
// A sync costs one pass over desired plus work for what changed: Apply
// remembers the Services it applied and skips those that come again
// unchanged. It keeps their backend lists without copying them and tells
// an unchanged list by its identity, so the caller must not modify a list
// after passing it (lb.Compute and lb.Computer never do). desired is
// expected sorted by frontend, as the model makes it; otherwise it is
// sorted first, and of a frontend listed twice the last listing wins.
func (r *Reconciler) Apply(desired lb.State) (Stats, error) {
	var drift Drift
	if !r.restored || r.verify {
		var err error
		if drift, err = r.restore(); err != nil {
			return Stats{}, err
		}
	}
	st, err := r.apply(desired)
	st.Drift = drift
	if err != nil {
		r.restored = false
	}
	return st, err
}

type desiredService struct {
	fe       maps.Frontend
	service  string // namespace/name
	name     string // namespace/name:port
	flags    uint16
	affinity uint32 // seconds
	backends []maps.Backend
	// ejected are members that outlier ejection keeps out of backends:
	// leaving backends for that is not a departure.
	ejected []maps.Backend
}

// appliedService is a desired Service as Apply last handled it.
type appliedService struct {
	svc lb.Service
	// rejected: toMaps refused it, so it is not in the maps, and will not
	// be while it stays the same.
	rejected bool
	// over: the maps had no room for it; every sync tries again.
	over bool
}

func (r *Reconciler) apply(desired lb.State) (Stats, error) {
	next, changed, gone, skipped := r.diff(byFrontend(desired.Services))
	return r.applyDiff(next, changed, gone, skipped, false)
}

// applyDiff writes what a diff found: next is the new applied list,
// changed the indexes of its entries to write, gone the frontends to
// remove; inPlace says that next is applied itself, edited.
func (r *Reconciler) applyDiff(next []appliedService, changed []int, gone []maps.Frontend, skipped int, inPlace bool) (Stats, error) {
	var st Stats

	want := make([]desiredService, 0, len(changed))
	for _, k := range changed {
		d, ok := toMaps(next[k].svc)
		next[k].rejected = !ok
		if !ok {
			// It may have been programmed before it changed.
			skipped++
			gone = append(gone, frontendOf(next[k].svc.Frontend))
			continue
		}
		if len(d.backends) > maps.MaxBackendsPerService {
			r.log.Warn("service has more backends than a frontend holds; using the first ones",
				"frontend", d.fe, "service", d.name, "backends", len(d.backends), "max", maps.MaxBackendsPerService)
			d.backends = d.backends[:maps.MaxBackendsPerService]
		}
		want = append(want, d)
	}
	if !r.complete {
		// After a Restore: whatever the maps hold beyond desired goes.
		wanted := make(map[maps.Frontend]bool, len(next))
		for _, a := range next {
			if !a.rejected {
				wanted[frontendOf(a.svc.Frontend)] = true
			}
		}
		for fe := range r.services {
			if !wanted[fe] {
				gone = append(gone, fe)
			}
		}
	}
	sortFrontends(gone)
	gone = slices.Compact(gone)

	p := makePlan(planInput{
		services: r.services, backends: r.backends, ids: r.ids, refs: r.refs, unused: r.unused,
		served: r.served, want: want, gone: gone, used: r.used, limit: r.limit, reserve: r.reserve,
		vips: r.vips, vipRefs: r.vipRefs, vipCheck: r.vipCheck,
	})
	if err := r.write(p, &st); err != nil {
		return st, err
	}
	r.reserve = p.reserve
	r.vipCheck = p.blocked
	for id := range r.unused {
		if _, known := r.ids[id]; !known || r.refs[id] > 0 {
			delete(r.unused, id)
		}
	}

	// Every write succeeded: remember what was applied, and that the
	// frontends without room are to be tried again.
	over := make(map[maps.Frontend]bool, len(p.over))
	for _, o := range p.over {
		over[o.Frontend] = true
	}
	for _, k := range changed {
		next[k].over = over[frontendOf(next[k].svc.Frontend)]
	}
	if !inPlace {
		r.applied, r.spare = next, r.applied
	}
	r.complete, r.skipped, r.overs = true, skipped, len(p.over)
	st.Services, st.Backends, st.Skipped, st.VIPs = len(r.services), len(r.ids), r.skipped, len(r.vips)
	st.OverCapacity = p.over
	return st, nil
}

// ref and unref count the frontends that list each backend.
func (r *Reconciler) ref(ids []maps.BackendID) {
	for _, id := range ids {
		r.refs[id]++
	}
}

func (r *Reconciler) unref(ids []maps.BackendID) {
	for _, id := range ids {
		if r.refs[id]--; r.refs[id] <= 0 {
			delete(r.refs, id)
			r.unused[id] = true
		}
	}
}

// departures lists the backends of before that are not in after.
func departures(revNAT maps.RevNATID, before, after []maps.BackendID) []maps.Departure {
	in := func(id maps.BackendID) bool { return slices.Contains(after, id) }
	if len(before)*len(after) > 1024 {
		// A service with thousands of backends: a set keeps one endpoint
		// change from costing millions of comparisons.
		set := make(map[maps.BackendID]bool, len(after))
		for _, id := range after {
			set[id] = true
		}
		in = func(id maps.BackendID) bool { return set[id] }
	}
	var out []maps.Departure
	for _, id := range before {
		if !in(id) {
			out = append(out, maps.Departure{RevNATID: revNAT, Backend: id})
		}
	}
	return out
}

// ErrIDsExhausted: every backend or frontend id is in use.
var ErrIDsExhausted = errors.New("ids exhausted")

func (r *Reconciler) allocBackend() (maps.BackendID, error) {
	for range 1 << 20 {
		r.nextBackend++
		if r.nextBackend == 0 {
			continue
		}
		if _, used := r.ids[r.nextBackend]; !used {
			return r.nextBackend, nil
		}
	}
	return 0, fmt.Errorf("allocate backend id: %w", ErrIDsExhausted)
}

func (r *Reconciler) allocRevNAT() (maps.RevNATID, error) {
	for range 1 << 20 {
		r.nextRevNAT++
		if _, used := r.revNATs[r.nextRevNAT]; r.nextRevNAT != 0 && !used {
			return r.nextRevNAT, nil
		}
	}
	return 0, fmt.Errorf("allocate frontend id: %w", ErrIDsExhausted)
}

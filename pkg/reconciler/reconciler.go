// Package reconciler is socklb's single writer to the BPF maps: it diffs the
// model's desired state against what it last wrote (restored from the pinned
// maps at start) and writes the difference in an order that never lets a
// connect see a frontend without its backends. Syncer drives it from sources
// with rate limiting, backoff and full resyncs.
package reconciler

import (
	"errors"
	"fmt"
	"log/slog"
	stdmaps "maps"
	"slices"
	"time"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// written is what the reconciler knows to be in the maps for one frontend.
type written struct {
	revNAT   maps.RevNATID
	name     string
	flags    uint16
	affinity uint32
	backends []maps.BackendID
}

// Reconciler owns the maps' content. It is not safe for concurrent use:
// there is one writer by design.
type Reconciler struct {
	maps maps.Maps
	log  *slog.Logger

	services map[maps.Frontend]written
	backends map[maps.Backend]maps.BackendID
	ids      map[maps.BackendID]maps.Backend
	revNATs  map[maps.RevNATID]bool
	// refs counts the frontends in services that list each backend, so
	// that a sync finds the backends it may delete without a pass over
	// every frontend. unused holds those whose count may have fallen to 0.
	refs   map[maps.BackendID]int
	unused map[maps.BackendID]bool

	// applied is the desired Services of the last successful Apply,
	// sorted by frontend, one per frontend: a desired Service equal to its
	// entry needs no conversion and no write, and both lists being sorted,
	// one pass in step finds what changed. It is valid while complete;
	// Restore clears complete, and the Apply after a Restore compares
	// every desired Service with services. spare is the buffer the next
	// applied is built in, so that a sync allocates no new list.
	applied, spare []appliedService
	complete       bool
	skipped        int // entries of applied with ok false

	nextBackend maps.BackendID
	nextRevNAT  maps.RevNATID

	// restored is false until bookkeeping matches the maps: at start and
	// after any failed write, the next Apply first rereads the maps.
	restored bool
}

// New returns a Reconciler that writes through m.
func New(m maps.Maps, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{maps: m, log: log}
}

// Stats says what one Apply changed.
type Stats struct {
	Services, Backends             int // programmed after the sync
	Published, Deleted             int // frontends written or removed
	BackendsAdded, BackendsRemoved int
	Skipped                        int // frontends the dataplane cannot program
	// Departed lists the backends that left a frontend in this sync.
	Departed []maps.Departure
}

// Restore rebuilds the bookkeeping from the maps, so that a restarted agent
// keeps ids stable and rewrites only what changed while it was away.
func (r *Reconciler) Restore() error {
	svcs, err := r.maps.Services()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	bes, err := r.maps.Backends()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if n, err := r.maps.Prune(); err != nil {
		return fmt.Errorf("restore: %w", err)
	} else if n > 0 {
		r.log.Info("pruned stale service slots", "slots", n)
	}
	r.services = make(map[maps.Frontend]written, len(svcs))
	r.backends = make(map[maps.Backend]maps.BackendID, len(bes))
	r.ids = make(map[maps.BackendID]maps.Backend, len(bes))
	r.revNATs = make(map[maps.RevNATID]bool, len(svcs))
	r.refs = make(map[maps.BackendID]int, len(bes))
	r.unused = make(map[maps.BackendID]bool)
	r.complete = false
	r.nextBackend, r.nextRevNAT = 0, 0
	for id, b := range bes {
		r.backends[b] = id
		r.ids[id] = b
		r.nextBackend = max(r.nextBackend, id)
	}
	for _, s := range svcs {
		r.services[s.Frontend] = written{
			revNAT: s.RevNATID, name: s.Name, flags: s.Flags, affinity: s.AffinityTimeout, backends: s.Backends,
		}
		r.revNATs[s.RevNATID] = true
		r.nextRevNAT = max(r.nextRevNAT, s.RevNATID)
		r.ref(s.Backends)
	}
	for id := range r.ids {
		if r.refs[id] == 0 {
			r.unused[id] = true
		}
	}
	r.restored = true
	r.log.Info("restored state from maps", "services", len(svcs), "backends", len(bes))
	return nil
}

// Apply makes the maps equal to desired. On error the maps hold a
// consistent mix of old and new state and the next Apply starts with a
// full resync.
//
// A sync costs one pass over desired plus work for what changed: Apply
// remembers the Services it applied and skips those that come again
// unchanged. It keeps their backend lists without copying them and tells
// an unchanged list by its identity, so the caller must not modify a list
// after passing it (lb.Compute and lb.Computer never do). desired is
// expected sorted by frontend, as the model makes it; otherwise it is
// sorted first, and of a frontend listed twice the last listing wins.
func (r *Reconciler) Apply(desired lb.State) (Stats, error) {
	if !r.restored {
		if err := r.Restore(); err != nil {
			return Stats{}, err
		}
	}
	st, err := r.apply(desired)
	if err != nil {
		r.restored = false
	}
	return st, err
}

type desiredService struct {
	fe       maps.Frontend
	name     string
	flags    uint16
	affinity uint32 // seconds
	backends []maps.Backend
}

// appliedService is a desired Service as Apply last handled it.
type appliedService struct {
	svc lb.Service
	ok  bool // toMaps accepted it; else the frontend is not in the maps
}

func (r *Reconciler) apply(desired lb.State) (Stats, error) {
	var st Stats
	list := byFrontend(desired.Services)

	// Walk list and applied side by side. Unchanged entries are copied in
	// runs; new and changed ones go on to be written; applied entries
	// passed over are gone.
	var old []appliedService
	if r.complete {
		old = r.applied
	}
	next := r.spare[:0]
	var changed []int // indexes into next of new and changed services
	var gone []maps.Frontend
	skipped := 0
	j, run := 0, 0 // old[run:j] are unchanged and not yet copied
	for i := range list {
		s := &list[i]
		fe := frontendOf(s.Frontend)
		c := -1
		for j < len(old) {
			if c = compareFrontends(frontendOf(old[j].svc.Frontend), fe); c >= 0 {
				break
			}
			next = append(next, old[run:j]...)
			if old[j].ok {
				gone = append(gone, frontendOf(old[j].svc.Frontend))
			}
			j++
			run = j
		}
		if c == 0 && sameService(&old[j].svc, s) {
			if !old[j].ok {
				skipped++
			}
			j++
			continue
		}
		next = append(next, old[run:j]...)
		if c == 0 {
			j++ // replaced
		}
		run = j
		changed = append(changed, len(next))
		next = append(next, appliedService{svc: *s})
	}
	next = append(next, old[run:j]...)
	for _, a := range old[j:] {
		if a.ok {
			gone = append(gone, frontendOf(a.svc.Frontend))
		}
	}

	want := make([]desiredService, 0, len(changed))
	for _, k := range changed {
		d, ok := toMaps(next[k].svc)
		next[k].ok = ok
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
		// After a Restore: whatever the maps hold beyond list goes.
		wanted := make(map[maps.Frontend]bool, len(want))
		for _, d := range want {
			wanted[d.fe] = true
		}
		for fe := range r.services {
			if !wanted[fe] {
				gone = append(gone, fe)
			}
		}
	}
	sortFrontends(gone)
	gone = slices.Compact(gone)

	// 1. Backends first, so that every slot published below resolves.
	for _, d := range want {
		for _, b := range d.backends {
			if _, ok := r.backends[b]; ok {
				continue
			}
			id, err := r.allocBackend()
			if err != nil {
				return st, err
			}
			if err := r.maps.UpsertBackend(id, b); err != nil {
				return st, fmt.Errorf("add backend %s: %w", b, err)
			}
			r.backends[b] = id
			r.ids[id] = b
			r.unused[id] = true // until a frontend below lists it
			st.BackendsAdded++
		}
	}

	// 2. Publish new and changed frontends.
	for _, d := range want {
		ids := make([]maps.BackendID, len(d.backends))
		for i, b := range d.backends {
			ids[i] = r.backends[b]
		}
		old, exists := r.services[d.fe]
		if exists && old.name == d.name && old.flags == d.flags && old.affinity == d.affinity &&
			slices.Equal(old.backends, ids) {
			continue
		}
		revNAT := old.revNAT
		if !exists {
			var err error
			if revNAT, err = r.allocRevNAT(); err != nil {
				return st, err
			}
		}
		err := r.maps.PublishService(maps.Service{
			Frontend: d.fe, RevNATID: revNAT, Name: d.name, Backends: ids,
			Flags: d.flags, AffinityTimeout: d.affinity,
		})
		if err != nil {
			return st, fmt.Errorf("publish %s (%s): %w", d.fe, d.name, err)
		}
		if exists {
			st.Departed = append(st.Departed, departures(revNAT, old.backends, ids)...)
		}
		r.ref(ids)
		r.unref(old.backends)
		r.services[d.fe] = written{revNAT: revNAT, name: d.name, flags: d.flags, affinity: d.affinity, backends: ids}
		r.revNATs[revNAT] = true
		st.Published++
		r.log.Debug("published", "frontend", d.fe, "service", d.name, "backends", len(ids))
	}

	// 3. Remove frontends that are gone.
	for _, fe := range gone {
		old, ok := r.services[fe]
		if !ok {
			continue // never programmed: the dataplane could not
		}
		if err := r.maps.DeleteService(fe); err != nil {
			return st, fmt.Errorf("delete %s: %w", fe, err)
		}
		st.Departed = append(st.Departed, departures(old.revNAT, old.backends, nil)...)
		r.unref(old.backends)
		delete(r.revNATs, old.revNAT)
		delete(r.services, fe)
		st.Deleted++
	}

	// 4. Remove backends no frontend refers to any more.
	for _, id := range slices.Sorted(stdmaps.Keys(r.unused)) {
		if _, known := r.ids[id]; !known || r.refs[id] > 0 {
			// Listed, or not in the backend map (a frontend restored
			// from a damaged map may name a missing backend).
			delete(r.unused, id)
			continue
		}
		if err := r.maps.DeleteBackend(id); err != nil {
			return st, fmt.Errorf("delete backend %d: %w", id, err)
		}
		delete(r.backends, r.ids[id])
		delete(r.ids, id)
		delete(r.refs, id)
		delete(r.unused, id)
		st.BackendsRemoved++
	}

	// Every write succeeded: remember what was applied.
	r.applied, r.spare = next, r.applied
	r.complete, r.skipped = true, skipped
	st.Services, st.Backends, st.Skipped = len(r.services), len(r.ids), r.skipped
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

// sameService reports whether a and b are equal in every field. It
// compares field by field because Backends makes lb.Service incomparable;
// TestSameServiceSeesEveryField keeps it in step with lb.Service.
func sameService(a, b *lb.Service) bool {
	return a.Frontend == b.Frontend && a.Kind == b.Kind && a.Name == b.Name && a.PortName == b.PortName &&
		a.TrafficLocal == b.TrafficLocal && a.ExternalLocal == b.ExternalLocal &&
		a.AffinityTimeout == b.AffinityTimeout && sameBackends(a.Backends, b.Backends)
}

// sameBackends is slices.Equal with a shortcut for the common case: the
// model hands out the same backend list for a frontend that did not change,
// and Apply keeps the lists it was given (see Apply), so the contents need
// no look.
func sameBackends(a, b []lb.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// byFrontend returns list sorted by dataplane frontend, one Service per
// frontend. The model's output already is, and is returned as it is.
// Anything else is sorted, and of a frontend listed twice (which only broken
// input can do) the last listing wins, as if each were written in turn.
func byFrontend(list []lb.Service) []lb.Service {
	sorted := true
	for i := 1; i < len(list) && sorted; i++ {
		sorted = compareFrontends(frontendOf(list[i-1].Frontend), frontendOf(list[i].Frontend)) < 0
	}
	if sorted {
		return list
	}
	out := slices.Clone(list)
	slices.SortStableFunc(out, func(a, b lb.Service) int {
		return compareFrontends(frontendOf(a.Frontend), frontendOf(b.Frontend))
	})
	n := 0
	for i := range out {
		if i+1 < len(out) && frontendOf(out[i].Frontend) == frontendOf(out[i+1].Frontend) {
			continue // a later listing follows
		}
		out[n] = out[i]
		n++
	}
	return out[:n]
}

// frontendOf is the dataplane's frontend of a model frontend, as toMaps
// makes it.
func frontendOf(f lb.Frontend) maps.Frontend {
	return maps.Frontend{Addr: f.Addr.Unmap(), Port: f.Port, Proto: uint8(f.Proto)}
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
		if r.nextRevNAT != 0 && !r.revNATs[r.nextRevNAT] {
			return r.nextRevNAT, nil
		}
	}
	return 0, fmt.Errorf("allocate frontend id: %w", ErrIDsExhausted)
}

// toMaps converts a model frontend to what the dataplane programs. ok is
// false for what it cannot program: a backend of another family than its
// frontend (the model never makes one; the check keeps the maps sane).
func toMaps(s lb.Service) (desiredService, bool) {
	d := desiredService{
		fe:       frontendOf(s.Frontend),
		name:     serviceName(s),
		flags:    flagsOf(s),
		affinity: uint32(s.AffinityTimeout / time.Second),
	}
	if !d.fe.Addr.IsValid() {
		return desiredService{}, false
	}
	for _, b := range s.Backends {
		a := b.Addr.Unmap()
		if a.Is4() != d.fe.Addr.Is4() {
			return desiredService{}, false
		}
		d.backends = append(d.backends, maps.Backend{Addr: a, Port: b.Port, Proto: uint8(s.Frontend.Proto)})
	}
	return d, true
}

func flagsOf(s lb.Service) uint16 {
	var f uint16
	if s.AffinityTimeout > 0 {
		f |= maps.FlagAffinity
	}
	if s.TrafficLocal {
		f |= maps.FlagLocal
	}
	switch s.Kind {
	case lb.KindNodePort:
		f |= maps.FlagNodePort
	case lb.KindExternalIP, lb.KindLoadBalancer:
		f |= maps.FlagExternal
	}
	return f
}

func serviceName(s lb.Service) string {
	n := s.Name.String()
	if s.PortName != "" {
		n += ":" + s.PortName
	}
	return n
}

// sortFrontends sorts fes, so that deletes happen in a stable order.
func sortFrontends(fes []maps.Frontend) {
	slices.SortFunc(fes, compareFrontends)
}

func compareFrontends(a, b maps.Frontend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	return int(a.Proto) - int(b.Proto)
}

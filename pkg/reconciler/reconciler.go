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
	}
	r.restored = true
	r.log.Info("restored state from maps", "services", len(svcs), "backends", len(bes))
	return nil
}

// Apply makes the maps equal to desired. On error the maps hold a
// consistent mix of old and new state and the next Apply starts with a
// full resync.
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

func (r *Reconciler) apply(desired lb.State) (Stats, error) {
	var st Stats
	want := make([]desiredService, 0, len(desired.Services))
	wantFE := make(map[maps.Frontend]bool, len(desired.Services))
	for _, s := range desired.Services {
		d, ok := toMaps(s)
		if !ok {
			st.Skipped++
			continue
		}
		if len(d.backends) > maps.MaxBackendsPerService {
			r.log.Warn("service has more backends than a frontend holds; using the first ones",
				"frontend", d.fe, "service", d.name, "backends", len(d.backends), "max", maps.MaxBackendsPerService)
			d.backends = d.backends[:maps.MaxBackendsPerService]
		}
		want = append(want, d)
		wantFE[d.fe] = true
	}

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
		r.services[d.fe] = written{revNAT: revNAT, name: d.name, flags: d.flags, affinity: d.affinity, backends: ids}
		r.revNATs[revNAT] = true
		st.Published++
		r.log.Debug("published", "frontend", d.fe, "service", d.name, "backends", len(ids))
	}

	// 3. Remove frontends that are gone.
	for _, fe := range sortedFrontends(r.services) {
		if wantFE[fe] {
			continue
		}
		if err := r.maps.DeleteService(fe); err != nil {
			return st, fmt.Errorf("delete %s: %w", fe, err)
		}
		st.Departed = append(st.Departed, departures(r.services[fe].revNAT, r.services[fe].backends, nil)...)
		delete(r.revNATs, r.services[fe].revNAT)
		delete(r.services, fe)
		st.Deleted++
	}

	// 4. Remove backends no frontend refers to any more.
	used := make(map[maps.BackendID]bool, len(r.ids))
	for _, w := range r.services {
		for _, id := range w.backends {
			used[id] = true
		}
	}
	for _, id := range slices.Sorted(stdmaps.Keys(r.ids)) {
		if used[id] {
			continue
		}
		if err := r.maps.DeleteBackend(id); err != nil {
			return st, fmt.Errorf("delete backend %d: %w", id, err)
		}
		delete(r.backends, r.ids[id])
		delete(r.ids, id)
		st.BackendsRemoved++
	}
	st.Services, st.Backends = len(r.services), len(r.ids)
	return st, nil
}

// departures lists the backends of before that are not in after.
func departures(revNAT maps.RevNATID, before, after []maps.BackendID) []maps.Departure {
	var out []maps.Departure
	for _, id := range before {
		if !slices.Contains(after, id) {
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
		fe:       maps.Frontend{Addr: s.Frontend.Addr.Unmap(), Port: s.Frontend.Port, Proto: uint8(s.Frontend.Proto)},
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

func sortedFrontends(m map[maps.Frontend]written) []maps.Frontend {
	out := make([]maps.Frontend, 0, len(m))
	for fe := range m {
		out = append(out, fe)
	}
	slices.SortFunc(out, func(a, b maps.Frontend) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return int(a.Proto) - int(b.Proto)
	})
	return out
}

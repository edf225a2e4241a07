package maps

import (
	"errors"
	"fmt"
	"sync"

	"github.com/socklb/socklb"
)

// table is one BPF map seen as key/value storage, so that the publish
// algorithm below runs unchanged over the kernel's maps and the fake.
type table[K comparable, V any] interface {
	lookup(k K) (v V, ok bool, err error)
	put(k K, v V) error
	// create writes k only if it is absent and reports whether k was
	// there already, in which case nothing is written.
	create(k K, v V) (existed bool, err error)
	// remove deletes k; a missing k is success.
	remove(k K) error
	// all returns a snapshot of every entry.
	all() (map[K]V, error)
}

// counterTable is the per-CPU counter map, summed on read.
type counterTable interface {
	create(id uint32) error
	read(id uint32) (Counters, bool, error)
	remove(id uint32) error
	// all returns every entry, summed over CPUs.
	all() (map[uint32]Counters, error)
}

type store struct {
	svc   table[socklb.BpfSvcKey, socklb.BpfSvcValue]
	be    table[uint32, socklb.BpfBackend]
	names table[uint32, socklb.BpfSvcName]
	aff   table[socklb.BpfAffinityKey, socklb.BpfAffinityValue]
	cnt   counterTable

	// bes mirrors what this store wrote to (and read from) the backend
	// map, so that a publish copies each backend into its slot without a
	// syscall per backend. An id's value never changes while it exists
	// (see UpsertBackend), so an entry is right until DeleteBackend. A
	// miss (an id written before a restart that Backends has not read)
	// falls back to the map. mu guards bes alone: one goroutine writes,
	// but Backends may be read from another.
	mu  sync.Mutex
	bes map[uint32]socklb.BpfBackend
}

var (
	_ Maps  = (*store)(nil)
	_ Stats = (*store)(nil)
)

func frontendKey(fe Frontend, slot uint16) (socklb.BpfSvcKey, error) {
	if fe.Proto != ProtoTCP && fe.Proto != ProtoUDP {
		return socklb.BpfSvcKey{}, fmt.Errorf("frontend %s: %w", fe, ErrUnsupported)
	}
	if !fe.Addr.IsValid() || fe.Addr.Zone() != "" {
		return socklb.BpfSvcKey{}, fmt.Errorf("frontend %s: address: %w", fe, ErrUnsupported)
	}
	return socklb.BpfSvcKey{Addr: addrToBE(fe.Addr), Port: portToBE16(fe.Port), Proto: fe.Proto, Slot: slot}, nil
}

func keyFrontend(k socklb.BpfSvcKey) Frontend {
	return Frontend{Addr: beToAddr(k.Addr), Port: be16ToPort(k.Port), Proto: k.Proto}
}

func toBackend(v socklb.BpfBackend) Backend {
	return Backend{Addr: beToAddr(v.Addr), Port: be16ToPort(v.Port), Proto: v.Proto}
}

// UpsertBackend creates the backend only if the id is free, so that it can
// never change the backend behind the copies in published slots; an id
// that holds the same backend already is left as it is.
func (s *store) UpsertBackend(id BackendID, b Backend) error {
	if !b.Addr.IsValid() || b.Addr.Zone() != "" {
		return fmt.Errorf("backend %d (%s): address: %w", id, b, ErrUnsupported)
	}
	v := socklb.BpfBackend{Addr: addrToBE(b.Addr), Port: portToBE16(b.Port), Proto: b.Proto}
	if old, ok := s.cached(uint32(id)); ok && old != v {
		return fmt.Errorf("write backend %d (%s): holds %s: %w", id, b, toBackend(old), ErrBackendChanged)
	}
	existed, err := s.be.create(uint32(id), v)
	if err != nil {
		return fmt.Errorf("write backend %d (%s): %w", id, b, err)
	}
	if existed {
		old, ok, err := s.be.lookup(uint32(id))
		if err != nil {
			return fmt.Errorf("write backend %d (%s): read it: %w", id, b, err)
		}
		if ok && old != v {
			s.cache(uint32(id), old)
			return fmt.Errorf("write backend %d (%s): holds %s: %w", id, b, toBackend(old), ErrBackendChanged)
		}
		if !ok {
			// Deleted since create looked: there is one writer, so
			// only by hand (bpftool).
			if err := s.be.put(uint32(id), v); err != nil {
				return fmt.Errorf("write backend %d (%s): %w", id, b, err)
			}
		}
	}
	s.cache(uint32(id), v)
	return nil
}

// DeleteBackend forgets the cached value first: after a failed delete the
// map may or may not hold the id, and a miss rereads it.
func (s *store) DeleteBackend(id BackendID) error {
	s.mu.Lock()
	delete(s.bes, uint32(id))
	s.mu.Unlock()
	if err := s.be.remove(uint32(id)); err != nil {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	return nil
}

func (s *store) cached(id uint32) (socklb.BpfBackend, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.bes[id]
	return v, ok
}

func (s *store) cache(id uint32, v socklb.BpfBackend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bes == nil {
		s.bes = make(map[uint32]socklb.BpfBackend)
	}
	s.bes[id] = v
}

// backendValues returns the backend of each id, for the slots; ids not in
// the cache are read from the backend map.
func (s *store) backendValues(ids []BackendID) ([]socklb.BpfBackend, error) {
	out := make([]socklb.BpfBackend, len(ids))
	for i, id := range ids {
		v, ok := s.cached(uint32(id))
		if !ok {
			var err error
			if v, ok, err = s.be.lookup(uint32(id)); err != nil {
				return nil, fmt.Errorf("read backend %d: %w", id, err)
			}
			if !ok {
				return nil, fmt.Errorf("backend %d: %w", id, ErrUnknownBackend)
			}
			s.cache(uint32(id), v)
		}
		out[i] = v
	}
	return out, nil
}

// PublishService writes the new backends (id and copy) into the half of the
// slot range that the live entry does not use, replaces the entry (one
// element update, which readers see whole), then deletes the old half. A
// reader holding the old entry still finds the old slots until that last
// step, and the program rereads the entry when a slot has gone.
func (s *store) PublishService(svc Service) error {
	if len(svc.Backends) > MaxBackendsPerService {
		return fmt.Errorf("publish %s: %d backends: %w", svc.Frontend, len(svc.Backends), ErrTooManyBackends)
	}
	entryKey, err := frontendKey(svc.Frontend, 0)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	// Every backend is found before anything is written.
	bes, err := s.backendValues(svc.Backends)
	if err != nil {
		return fmt.Errorf("publish %s: %w", svc.Frontend, err)
	}
	old, live, err := s.svc.lookup(entryKey)
	if err != nil {
		return fmt.Errorf("publish %s: read entry: %w", svc.Frontend, err)
	}
	var base uint16
	if live && old.Base == 0 {
		base = slotHalf
	}
	for i, id := range svc.Backends {
		k := entryKey
		k.Slot = base + uint16(i) + 1
		if err := s.svc.put(k, socklb.BpfSvcValue{BackendId: uint32(id), Backend: bes[i]}); err != nil {
			return fmt.Errorf("publish %s: write slot %d: %w", svc.Frontend, k.Slot, err)
		}
	}
	if err := s.cnt.create(uint32(svc.RevNATID)); err != nil {
		return fmt.Errorf("publish %s: create counters %d: %w", svc.Frontend, svc.RevNATID, err)
	}
	if err := s.names.put(uint32(svc.RevNATID), encodeName(svc.Name)); err != nil {
		return fmt.Errorf("publish %s: write name: %w", svc.Frontend, err)
	}
	entry := socklb.BpfSvcValue{
		Count:           uint16(len(svc.Backends)),
		Base:            base,
		RevNatId:        uint32(svc.RevNATID),
		Flags:           svc.Flags,
		AffinityTimeout: svc.AffinityTimeout,
	}
	if err := s.svc.put(entryKey, entry); err != nil {
		return fmt.Errorf("publish %s: write entry: %w", svc.Frontend, err)
	}
	if live {
		if err := s.removeSlots(entryKey, old.Base, old.Count); err != nil {
			return fmt.Errorf("publish %s: delete old slots: %w", svc.Frontend, err)
		}
		if old.RevNatId != entry.RevNatId {
			if err := s.removeIDState(old.RevNatId); err != nil {
				return fmt.Errorf("publish %s: %w", svc.Frontend, err)
			}
		}
	}
	// Only a frontend that had affinity can have entries to drop (ids of
	// deleted frontends are purged on delete), and walking the affinity
	// map on every publish would make a cold start quadratic.
	if live && old.Flags&FlagAffinity != 0 {
		keep := make(map[uint32]bool, len(svc.Backends))
		for _, id := range svc.Backends {
			keep[uint32(id)] = true
		}
		if svc.Flags&FlagAffinity == 0 {
			keep = nil
		}
		if err := s.purgeAffinity(old.RevNatId, keep); err != nil {
			return fmt.Errorf("publish %s: %w", svc.Frontend, err)
		}
	}
	return nil
}

// purgeAffinity drops the affinity entries of a frontend whose backend is
// not in keep (all of them when keep is nil), so that a client never
// sticks to a backend that left the service.
func (s *store) purgeAffinity(revNAT uint32, keep map[uint32]bool) error {
	all, err := s.aff.all()
	if err != nil {
		return fmt.Errorf("read affinity map: %w", err)
	}
	for k, v := range all {
		if k.RevNatId != revNAT || keep[v.BackendId] {
			continue
		}
		if err := s.aff.remove(k); err != nil {
			return fmt.Errorf("delete affinity entry: %w", err)
		}
	}
	return nil
}

func (s *store) removeSlots(entryKey socklb.BpfSvcKey, base, count uint16) error {
	for i := uint16(1); i <= count; i++ {
		k := entryKey
		k.Slot = base + i
		if err := s.svc.remove(k); err != nil {
			return fmt.Errorf("delete slot %d: %w", k.Slot, err)
		}
	}
	return nil
}

func (s *store) removeIDState(id uint32) error {
	if err := s.cnt.remove(id); err != nil {
		return fmt.Errorf("delete counters %d: %w", id, err)
	}
	if err := s.purgeAffinity(id, nil); err != nil {
		return err
	}
	if err := s.names.remove(id); err != nil {
		return fmt.Errorf("delete name %d: %w", id, err)
	}
	return nil
}

// DeleteService removes the entry first, so that readers stop finding the
// frontend before its slots go.
func (s *store) DeleteService(fe Frontend) error {
	entryKey, err := frontendKey(fe, 0)
	if err != nil {
		return fmt.Errorf("delete service: %w", err)
	}
	old, live, err := s.svc.lookup(entryKey)
	if err != nil {
		return fmt.Errorf("delete service %s: read entry: %w", fe, err)
	}
	if !live {
		return nil
	}
	if err := s.svc.remove(entryKey); err != nil {
		return fmt.Errorf("delete service %s: delete entry: %w", fe, err)
	}
	if err := s.removeSlots(entryKey, old.Base, old.Count); err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	if err := s.removeIDState(old.RevNatId); err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	return nil
}

func (s *store) Services() ([]Service, error) {
	all, err := s.svc.all()
	if err != nil {
		return nil, fmt.Errorf("read service map: %w", err)
	}
	names, err := s.names.all()
	if err != nil {
		return nil, fmt.Errorf("read name map: %w", err)
	}
	var out []Service
	for k, v := range all {
		if k.Slot != 0 {
			continue
		}
		svc := Service{
			Frontend:        keyFrontend(k),
			RevNATID:        RevNATID(v.RevNatId),
			Flags:           v.Flags,
			AffinityTimeout: v.AffinityTimeout,
			Name:            decodeName(names[v.RevNatId]),
			Backends:        make([]BackendID, 0, v.Count),
		}
		for i := uint16(1); i <= v.Count; i++ {
			sk := k
			sk.Slot = v.Base + i
			slot, ok := all[sk]
			if !ok {
				return nil, fmt.Errorf("read service %s: slot %d is missing", svc.Frontend, sk.Slot)
			}
			svc.Backends = append(svc.Backends, BackendID(slot.BackendId))
		}
		out = append(out, svc)
	}
	sortServices(out)
	return out, nil
}

// Backends also refills the cache from what it read: a restarted agent
// restores from here, and its publishes then find every backend cached.
func (s *store) Backends() (map[BackendID]Backend, error) {
	all, err := s.be.all()
	if err != nil {
		return nil, fmt.Errorf("read backend map: %w", err)
	}
	out := make(map[BackendID]Backend, len(all))
	for id, v := range all {
		out[BackendID(id)] = toBackend(v)
	}
	s.mu.Lock()
	s.bes = all
	s.mu.Unlock()
	return out, nil
}

func (s *store) Counters(id RevNATID) (Counters, error) {
	c, _, err := s.cnt.read(uint32(id))
	if err != nil {
		return Counters{}, fmt.Errorf("read counters %d: %w", id, err)
	}
	return c, nil
}

func (s *store) Prune() (int, error) {
	all, err := s.svc.all()
	if err != nil {
		return 0, fmt.Errorf("prune: read service map: %w", err)
	}
	var pruned int
	var errs []error
	for k := range all {
		if k.Slot == 0 {
			continue
		}
		ek := k
		ek.Slot = 0
		if e, ok := all[ek]; ok && k.Slot > e.Base && k.Slot <= e.Base+e.Count {
			continue
		}
		if err := s.svc.remove(k); err != nil {
			errs = append(errs, err)
			continue
		}
		pruned++
	}
	if err := errors.Join(errs...); err != nil {
		return pruned, fmt.Errorf("prune: %w", err)
	}
	return pruned, nil
}

func encodeName(name string) socklb.BpfSvcName {
	var n socklb.BpfSvcName
	for i := 0; i < len(name) && i < nameLen-1; i++ {
		n.Name[i] = int8(name[i])
	}
	return n
}

func decodeName(n socklb.BpfSvcName) string {
	b := make([]byte, 0, nameLen)
	for _, c := range n.Name {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

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
	memb  table[socklb.BpfSvcMember, uint8]
	names table[uint32, socklb.BpfSvcName]
	aff   table[socklb.BpfAffinityKey, socklb.BpfAffinityValue]
	cnt   counterTable
	// stat is the sock_ops program's connect outcomes per backend.
	stat table[uint32, socklb.BpfBackendStats]
	// ej is the agent's record of its outlier ejections.
	ej table[socklb.BpfBackend, socklb.BpfEjection]
	// avoid holds the backends the programs avoid until the agent has
	// decided on them.
	avoid table[uint32, uint64]
	// vip holds the cluster IPs, with their refusal counts.
	vip table[socklb.BpfVipKey, socklb.BpfVipValue]

	capacity Capacity

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
	// The outcomes go with it: a socket to it that closes later finds
	// no entry and counts nothing.
	if err := s.stat.remove(uint32(id)); err != nil {
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

// PublishService writes a member entry for each new backend and the new
// backends (id and copy) into the half of the slot range that the live
// entry does not use; then it replaces the entry (one element update, which readers
// see whole), deletes the old half, and last the member entries of the
// backends that left. A reader holding the old entry still finds the old
// slots until then, and the program rereads the entry when a slot has
// gone; at no moment does the live set list a backend without its member
// entry. A publish that fails before the entry is replaced takes back the
// member entries it created.
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
	var oldIDs []uint32
	if live {
		if oldIDs, err = s.slotIDs(entryKey, old); err != nil {
			return fmt.Errorf("publish %s: %w", svc.Frontend, err)
		}
	}
	var base uint16
	if live && old.Base == 0 {
		base = slotHalf
	}
	// Members first: then every slot in the map, of either half, has the
	// member entry of its backend.
	created, err := s.addMembers(uint32(svc.RevNATID), svc.Backends)
	for i := 0; err == nil && i < len(svc.Backends); i++ {
		k := entryKey
		k.Slot = base + uint16(i) + 1
		if err = s.svc.put(k, socklb.BpfSvcValue{BackendId: uint32(svc.Backends[i]), Backend: bes[i]}); err != nil {
			err = fmt.Errorf("write slot %d: %w", k.Slot, err)
		}
	}
	if err == nil {
		err = s.writeIDState(svc)
	}
	entry := socklb.BpfSvcValue{
		Count:           uint16(len(svc.Backends)),
		Base:            base,
		RevNatId:        uint32(svc.RevNATID),
		Flags:           svc.Flags,
		AffinityTimeout: svc.AffinityTimeout,
	}
	if err == nil {
		if err = s.svc.put(entryKey, entry); err != nil {
			err = fmt.Errorf("write entry: %w", err)
		}
	}
	if err != nil {
		// The old set is still live: members written for the new one
		// would let a socket keep a backend the live set does not list.
		return fmt.Errorf("publish %s: %w", svc.Frontend, errors.Join(err, s.removeMembers(created)))
	}
	if live {
		if err := s.removeSlots(entryKey, old.Base, old.Count); err != nil {
			return fmt.Errorf("publish %s: delete old slots: %w", svc.Frontend, err)
		}
		if err := s.removeMembers(leftMembers(old.RevNatId, oldIDs, entry.RevNatId, svc.Backends)); err != nil {
			return fmt.Errorf("publish %s: %w", svc.Frontend, err)
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

// writeIDState creates the frontend's counters and writes its name.
func (s *store) writeIDState(svc Service) error {
	if err := s.cnt.create(uint32(svc.RevNATID)); err != nil {
		return fmt.Errorf("create counters %d: %w", svc.RevNATID, err)
	}
	if err := s.names.put(uint32(svc.RevNATID), encodeName(svc.Name)); err != nil {
		return fmt.Errorf("write name: %w", err)
	}
	return nil
}

// slotIDs reads the backend ids of an entry's live slots; a missing slot
// (damage, see Services) is skipped.
func (s *store) slotIDs(entryKey socklb.BpfSvcKey, e socklb.BpfSvcValue) ([]uint32, error) {
	ids := make([]uint32, 0, e.Count)
	for i := uint16(1); i <= e.Count; i++ {
		k := entryKey
		k.Slot = e.Base + i
		v, ok, err := s.svc.lookup(k)
		if err != nil {
			return nil, fmt.Errorf("read slot %d: %w", k.Slot, err)
		}
		if ok {
			ids = append(ids, v.BackendId)
		}
	}
	return ids, nil
}

// addMembers creates the member entry of each backend and returns the
// ones that were not there before.
func (s *store) addMembers(revNAT uint32, ids []BackendID) ([]socklb.BpfSvcMember, error) {
	var created []socklb.BpfSvcMember
	for _, id := range ids {
		m := socklb.BpfSvcMember{RevNatId: revNAT, BackendId: uint32(id)}
		existed, err := s.memb.create(m, 1)
		if err != nil {
			return created, fmt.Errorf("write member entry of backend %d: %w", id, err)
		}
		if !existed {
			created = append(created, m)
		}
	}
	return created, nil
}

func (s *store) removeMembers(ms []socklb.BpfSvcMember) error {
	var errs []error
	for _, m := range ms {
		if err := s.memb.remove(m); err != nil {
			errs = append(errs, fmt.Errorf("delete member entry of backend %d: %w", m.BackendId, err))
		}
	}
	return errors.Join(errs...)
}

// leftMembers returns the member entries of the old set that the new set
// does not have.
func leftMembers(oldRevNAT uint32, oldIDs []uint32, newRevNAT uint32, newIDs []BackendID) []socklb.BpfSvcMember {
	stay := make(map[uint32]bool, len(newIDs))
	if oldRevNAT == newRevNAT {
		for _, id := range newIDs {
			stay[uint32(id)] = true
		}
	}
	var out []socklb.BpfSvcMember
	for _, id := range oldIDs {
		if !stay[id] {
			stay[id] = true // once, also for an id listed twice
			out = append(out, socklb.BpfSvcMember{RevNatId: oldRevNAT, BackendId: id})
		}
	}
	return out
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
// frontend before its slots and member entries go.
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
	ids, err := s.slotIDs(entryKey, old)
	if err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	if err := s.svc.remove(entryKey); err != nil {
		return fmt.Errorf("delete service %s: delete entry: %w", fe, err)
	}
	if err := s.removeSlots(entryKey, old.Base, old.Count); err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	if err := s.removeMembers(leftMembers(old.RevNatId, ids, old.RevNatId, nil)); err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	if err := s.removeIDState(old.RevNatId); err != nil {
		return fmt.Errorf("delete service %s: %w", fe, err)
	}
	return nil
}

func (s *store) Capacity() Capacity { return s.capacity }

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

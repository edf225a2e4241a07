package maps

import (
	"errors"
	"fmt"
	"slices"

	"github.com/socklb/socklb"
)

// Services reads the service, backend, member, name and counter maps once
// each and checks every frontend against them (see Service.Damage).
func (s *store) Services() ([]Service, error) {
	all, err := s.svc.all()
	if err != nil {
		return nil, fmt.Errorf("read service map: %w", err)
	}
	bes, err := s.be.all()
	if err != nil {
		return nil, fmt.Errorf("read backend map: %w", err)
	}
	members, err := s.memb.all()
	if err != nil {
		return nil, fmt.Errorf("read member map: %w", err)
	}
	names, err := s.names.all()
	if err != nil {
		return nil, fmt.Errorf("read name map: %w", err)
	}
	counters, err := s.cnt.all()
	if err != nil {
		return nil, fmt.Errorf("read counter map: %w", err)
	}
	s.mu.Lock()
	s.bes = bes
	s.mu.Unlock()
	byRevNAT := make(map[uint32][]uint32)
	for m := range members {
		byRevNAT[m.RevNatId] = append(byRevNAT[m.RevNatId], m.BackendId)
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
		damage := func(format string, args ...any) {
			svc.Damage = append(svc.Damage, fmt.Sprintf(format, args...))
		}
		whole := true
		for i := uint16(1); i <= v.Count; i++ {
			sk := k
			sk.Slot = v.Base + i
			slot, ok := all[sk]
			if !ok {
				damage("live slot %d is missing", sk.Slot)
				whole = false
				continue
			}
			id := slot.BackendId
			svc.Backends = append(svc.Backends, BackendID(id))
			if be, ok := bes[id]; !ok {
				damage("slot %d: backend %d is not in the backend map", sk.Slot, id)
			} else if be != slot.Backend {
				damage("slot %d: its copy of backend %d is %s, the backend map holds %s",
					sk.Slot, id, toBackend(slot.Backend), toBackend(be))
			}
			if _, ok := members[socklb.BpfSvcMember{RevNatId: v.RevNatId, BackendId: id}]; !ok {
				damage("backend %d has no member entry", id)
			}
		}
		// Without every slot the set is not known, nor what is stray.
		if stray := strays(byRevNAT[v.RevNatId], svc.Backends); whole && len(stray) > 0 {
			damage("member entries for backends %v, which the live set does not list", stray)
		}
		if _, ok := names[v.RevNatId]; !ok {
			damage("name entry %d is missing", v.RevNatId)
		}
		if _, ok := counters[v.RevNatId]; !ok {
			damage("counter entry %d is missing", v.RevNatId)
		}
		out = append(out, svc)
	}
	sortServices(out)
	return out, nil
}

// strays returns the ids in members that listed does not hold, sorted.
func strays(members []uint32, listed []BackendID) []uint32 {
	if len(members) == 0 {
		return nil
	}
	in := func(id uint32) bool { return slices.Contains(listed, BackendID(id)) }
	if len(listed) > 8 {
		set := make(map[uint32]bool, len(listed))
		for _, id := range listed {
			set[uint32(id)] = true
		}
		in = func(id uint32) bool { return set[id] }
	}
	var out []uint32
	for _, id := range members {
		if !in(id) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
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

// Prune reads the service and member maps once each.
func (s *store) Prune() (int, error) {
	all, err := s.svc.all()
	if err != nil {
		return 0, fmt.Errorf("prune: read service map: %w", err)
	}
	members, err := s.memb.all()
	if err != nil {
		return 0, fmt.Errorf("prune: read member map: %w", err)
	}
	// The backends that each live frontend lists.
	listed := make(map[uint32]map[uint32]bool)
	for k, e := range all {
		if k.Slot != 0 {
			continue
		}
		ids := make(map[uint32]bool, e.Count)
		for i := uint16(1); i <= e.Count; i++ {
			sk := k
			sk.Slot = e.Base + i
			if slot, ok := all[sk]; ok {
				ids[slot.BackendId] = true
			}
		}
		listed[e.RevNatId] = ids
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
	for m := range members {
		if listed[m.RevNatId][m.BackendId] {
			continue
		}
		if err := s.memb.remove(m); err != nil {
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

package maps

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb"
)

// FrontendStats is one frontend's name and counters.
type FrontendStats struct {
	RevNATID RevNATID
	// Name is "namespace/name:port" as published (see Service.Name).
	Name string
	Counters
}

// Usage is how full one map is.
type Usage struct {
	Map        string
	Entries    int
	MaxEntries int
}

// Stats reads what monitoring exports. It is separate from Maps because
// the reconciler never needs it.
type Stats interface {
	// FrontendStats returns the name and counters of every frontend that
	// has a name, sorted by id.
	FrontendStats() ([]FrontendStats, error)
}

// FrontendStats reads the name map and the counter map once each, rather
// than one lookup per frontend, so that a scrape at 100 000 frontends stays
// cheap.
func (s *store) FrontendStats() ([]FrontendStats, error) {
	names, err := s.names.all()
	if err != nil {
		return nil, fmt.Errorf("read names: %w", err)
	}
	counters, err := s.cnt.all()
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	out := make([]FrontendStats, 0, len(names))
	for id, n := range names {
		out = append(out, FrontendStats{RevNATID: RevNATID(id), Name: decodeName(n), Counters: counters[id]})
	}
	slices.SortFunc(out, func(a, b FrontendStats) int { return int(a.RevNATID) - int(b.RevNATID) })
	return out, nil
}

// MapUsage counts the entries of each of socklb's maps that can be
// iterated (the per-socket storage cannot). Counting walks every key: at
// 100 000 frontends of ten backends that is about a million syscalls, so
// callers should not do it more often than a scrape. Under concurrent
// deletes the walk may restart and count some keys twice; it never counts
// past the map's size.
func MapUsage(m *socklb.BpfMaps) ([]Usage, error) {
	all := []*ebpf.Map{m.SocklbSvcV2, m.SocklbBeV2, m.SocklbCntV2, m.SocklbNameV2, m.SocklbAffV2, m.SocklbGoneV2}
	out := make([]Usage, 0, len(all))
	var errs []error
	for _, mp := range all {
		if mp == nil {
			continue
		}
		info, err := mp.Info()
		if err != nil {
			errs = append(errs, fmt.Errorf("map info: %w", err))
			continue
		}
		n, err := countKeys(mp)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s: %w", info.Name, err))
			continue
		}
		out = append(out, Usage{Map: strings.TrimSuffix(info.Name, "\x00"), Entries: n, MaxEntries: int(mp.MaxEntries())})
	}
	return out, errors.Join(errs...)
}

func countKeys(m *ebpf.Map) (int, error) {
	limit := int(m.MaxEntries())
	// An untyped nil asks for the first key; a nil []byte would be
	// marshalled as an empty key.
	var (
		key any
		n   int
	)
	for n < limit {
		next, err := m.NextKeyBytes(key)
		if err != nil {
			return n, err
		}
		if next == nil {
			break
		}
		key = next
		n++
	}
	return n, nil
}

package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

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
	// BackendStats returns the connect outcomes of every backend that
	// the sock_ops program has counted a connect to.
	BackendStats() (map[BackendID]BackendStats, error)
	// Backends returns every backend in the backend map.
	Backends() (map[BackendID]Backend, error)
	// VIPRefusals returns, for each cluster IP in the map, the connects
	// and sends to it refused because no frontend has their port and
	// protocol. An address's count goes with its entry.
	VIPRefusals() (map[netip.Addr]uint64, error)
}

// BackendStats are one backend's connect outcomes from this node (struct
// backend_stats): TCP connects socklb rewrote, from the SYN on.
type BackendStats struct {
	// Open counts connects not closed yet, those still connecting
	// included.
	Open int64
	// Established and Failed count connects that reached ESTABLISHED and
	// those closed before (refused, timed out, given up).
	Established, Failed uint64
	// Consecutive counts failures since the last established connect.
	Consecutive uint32
	// LastFailure is the time of the last failure on the boot-time
	// clock (CLOCK_BOOTTIME), 0 if none.
	LastFailure time.Duration
}

// BackendStats reads the outcome map once.
func (s *store) BackendStats() (map[BackendID]BackendStats, error) {
	all, err := s.stat.all()
	if err != nil {
		return nil, fmt.Errorf("read backend stats: %w", err)
	}
	out := make(map[BackendID]BackendStats, len(all))
	for id, v := range all {
		out[BackendID(id)] = BackendStats{Open: v.Open, Established: v.Established, Failed: v.Failed,
			Consecutive: v.Consecutive, LastFailure: time.Duration(v.LastFailureNs)}
	}
	return out, nil
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
// iterated (the per-socket storage cannot). Hash maps are read in batches
// of a few thousand entries per syscall, so that a scrape at 100 000
// frontends of ten backends (over a million service-map entries) costs a
// few hundred syscalls rather than a million. Counts taken while the agent
// writes are approximate.
func MapUsage(m *socklb.BpfMaps) ([]Usage, error) {
	counters := []struct {
		m     *ebpf.Map
		count func(*ebpf.Map) (int, error)
	}{
		{m.SocklbSvcV3, countBatch[socklb.BpfSvcKey, socklb.BpfSvcValue]},
		{m.SocklbBeV3, countBatch[uint32, socklb.BpfBackend]},
		{m.SocklbMembV3, countBatch[socklb.BpfSvcMember, uint8]},
		{m.SocklbCntV3, countPerCPU},
		{m.SocklbNameV3, countBatch[uint32, socklb.BpfSvcName]},
		{m.SocklbAffV3, countBatch[socklb.BpfAffinityKey, socklb.BpfAffinityValue]},
		{m.SocklbGoneV3, countBatch[socklb.BpfDeparture, uint8]},
		{m.SocklbVipV3, countBatch[socklb.BpfVipKey, socklb.BpfVipValue]},
	}
	out := make([]Usage, 0, len(counters))
	var errs []error
	for _, c := range counters {
		if c.m == nil {
			continue
		}
		info, err := c.m.Info()
		if err != nil {
			errs = append(errs, fmt.Errorf("map info: %w", err))
			continue
		}
		n, err := c.count(c.m)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s: %w", info.Name, err))
			continue
		}
		out = append(out, Usage{Map: info.Name, Entries: n, MaxEntries: int(c.m.MaxEntries())})
	}
	return out, errors.Join(errs...)
}

// batchSize is entries per batch syscall. A hash bucket holding more than
// this (never, with a sane hash) would make the kernel refuse the batch.
const batchSize = 4096

func countBatch[K, V any](m *ebpf.Map) (int, error) {
	n := 0
	err := readBatches(m, 1, func(keys []K, _ []V) { n += len(keys) })
	return n, err
}

// countPerCPU counts a per-CPU map's keys: its batches carry every
// CPU's value of each key.
func countPerCPU(m *ebpf.Map) (int, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return 0, err
	}
	n := 0
	err = readBatches(m, cpus, func(ids []uint32, _ []socklb.BpfSvcCounters) { n += len(ids) })
	return n, err
}

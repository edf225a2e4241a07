package maps

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb"
)

// New returns Maps over the kernel's maps. It does not take ownership:
// the caller closes m.
func New(m *socklb.BpfMaps) Maps {
	return &store{
		svc:   ebpfTable[socklb.BpfSvcKey, socklb.BpfSvcValue]{m.SocklbSvcV3, socklb.BpfMapSocklbSvcV3},
		be:    ebpfTable[uint32, socklb.BpfBackend]{m.SocklbBeV3, socklb.BpfMapSocklbBeV3},
		memb:  ebpfTable[socklb.BpfSvcMember, uint8]{m.SocklbMembV3, socklb.BpfMapSocklbMembV3},
		names: ebpfTable[uint32, socklb.BpfSvcName]{m.SocklbNameV3, socklb.BpfMapSocklbNameV3},
		aff:   ebpfTable[socklb.BpfAffinityKey, socklb.BpfAffinityValue]{m.SocklbAffV3, socklb.BpfMapSocklbAffV3},
		cnt:   percpuCounters{m.SocklbCntV3, socklb.BpfMapSocklbCntV3},
		stat:  ebpfTable[uint32, socklb.BpfBackendStats]{m.SocklbBestatV3, socklb.BpfMapSocklbBestatV3},
		ej:    ebpfTable[socklb.BpfBackend, socklb.BpfEjection]{m.SocklbEjectV3, socklb.BpfMapSocklbEjectV3},
		avoid: ebpfTable[uint32, uint64]{m.SocklbAvoidV3, socklb.BpfMapSocklbAvoidV3},
		vip:   ebpfTable[socklb.BpfVipKey, socklb.BpfVipValue]{m.SocklbVipV3, socklb.BpfMapSocklbVipV3},
		capacity: Capacity{
			Services: maxEntries(m.SocklbSvcV3),
			Backends: maxEntries(m.SocklbBeV3),
			Members:  maxEntries(m.SocklbMembV3),
			Counters: maxEntries(m.SocklbCntV3),
			Names:    maxEntries(m.SocklbNameV3),
			VIPs:     maxEntries(m.SocklbVipV3),
		},
	}
}

func maxEntries(m *ebpf.Map) int {
	if m == nil {
		return 0
	}
	return int(m.MaxEntries())
}

// DefaultCapacity is the max_entries that the compiled objects declare,
// which a datapath has unless its loader was told otherwise.
var DefaultCapacity = sync.OnceValues(func() (Capacity, error) {
	spec, err := socklb.LoadBpf()
	if err != nil {
		return Capacity{}, fmt.Errorf("read bpf objects: %w", err)
	}
	entries := func(name string) int {
		if ms := spec.Maps[name]; ms != nil {
			return int(ms.MaxEntries)
		}
		return 0
	}
	return Capacity{
		Services: entries(socklb.BpfMapSocklbSvcV3),
		Backends: entries(socklb.BpfMapSocklbBeV3),
		Members:  entries(socklb.BpfMapSocklbMembV3),
		Counters: entries(socklb.BpfMapSocklbCntV3),
		Names:    entries(socklb.BpfMapSocklbNameV3),
		VIPs:     entries(socklb.BpfMapSocklbVipV3),
	}, nil
})

// ebpfTable is one kernel map; name is its name in the objects, for
// errors.
type ebpfTable[K comparable, V any] struct {
	m    *ebpf.Map
	name string
}

func (t ebpfTable[K, V]) lookup(k K) (V, bool, error) {
	var v V
	err := t.m.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	return v, err == nil, mapError(t.name, err)
}

func (t ebpfTable[K, V]) put(k K, v V) error {
	return mapError(t.name, t.m.Update(&k, &v, ebpf.UpdateAny))
}

func (t ebpfTable[K, V]) create(k K, v V) (bool, error) {
	err := t.m.Update(&k, &v, ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		return true, nil
	}
	return false, mapError(t.name, err)
}

func (t ebpfTable[K, V]) remove(k K) error {
	err := t.m.Delete(&k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return mapError(t.name, err)
}

// all reads the table in batches (a syscall per batchSize entries, where
// an iterator makes two per entry: at 100 000 frontends the periodic
// reconciliation reads over a million entries), or with an iterator on a
// kernel that cannot batch.
func (t ebpfTable[K, V]) all() (map[K]V, error) {
	out := make(map[K]V)
	err := readBatches(t.m, 1, func(keys []K, values []V) {
		for i, k := range keys {
			out[k] = values[i]
		}
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		clear(out)
		var (
			k K
			v V
		)
		it := t.m.Iterate()
		for it.Next(&k, &v) {
			out[k] = v
		}
		err = it.Err()
	}
	if err != nil {
		return nil, mapError(t.name, fmt.Errorf("read all: %w", err))
	}
	return out, nil
}

// readBatches hands each batch of m's entries to each: keys, and values
// perKey to a key (a per-CPU map's values for each possible CPU, in
// order). It returns ebpf.ErrNotSupported where the kernel has no batch
// lookups (before 5.6). Entries written meanwhile may be seen or not, as
// with an iterator.
func readBatches[K, V any](m *ebpf.Map, perKey int, each func(keys []K, values []V)) error {
	n := int(min(uint32(batchSize), max(m.MaxEntries(), 1)))
	keys, values := make([]K, n), make([]V, n*perKey)
	var cursor ebpf.MapBatchCursor
	// A call fills the batch but for the room a whole hash bucket needs
	// (bucket sizes are small): twice the calls a full map needs only
	// guards against a walk that would not end.
	for range 2*int(m.MaxEntries())/n + 2 {
		got, err := m.BatchLookup(&cursor, keys, values, nil)
		if got > 0 && (err == nil || errors.Is(err, ebpf.ErrKeyNotExist)) {
			each(keys[:got], values[:got*perKey])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return errors.New("batch lookup did not reach the end of the map")
}

type percpuCounters struct {
	m    *ebpf.Map
	name string
}

func (c percpuCounters) create(id uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	zero := make([]socklb.BpfSvcCounters, cpus)
	err = c.m.Update(&id, zero, ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		return nil
	}
	return mapError(c.name, err)
}

func (c percpuCounters) read(id uint32) (Counters, bool, error) {
	var perCPU []socklb.BpfSvcCounters
	err := c.m.Lookup(&id, &perCPU)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Counters{}, false, nil
	}
	if err != nil {
		return Counters{}, false, mapError(c.name, err)
	}
	return sumCounters(perCPU), true, nil
}

func (c percpuCounters) all() (map[uint32]Counters, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]Counters)
	err = readBatches(c.m, cpus, func(ids []uint32, perCPU []socklb.BpfSvcCounters) {
		for i, id := range ids {
			out[id] = sumCounters(perCPU[i*cpus : (i+1)*cpus])
		}
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		clear(out)
		var (
			id     uint32
			perCPU []socklb.BpfSvcCounters
		)
		it := c.m.Iterate()
		for it.Next(&id, &perCPU) {
			out[id] = sumCounters(perCPU)
		}
		err = it.Err()
	}
	if err != nil {
		return nil, mapError(c.name, fmt.Errorf("read all: %w", err))
	}
	return out, nil
}

func sumCounters(perCPU []socklb.BpfSvcCounters) Counters {
	var sum Counters
	for _, v := range perCPU {
		sum.Connects += v.Connects
		sum.Refused += v.Refused
	}
	return sum
}

func (c percpuCounters) remove(id uint32) error {
	err := c.m.Delete(&id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return mapError(c.name, err)
}

// NewStats returns Stats over the kernel's maps; like New, it does not
// take ownership of m.
func NewStats(m *socklb.BpfMaps) Stats { return New(m).(*store) }

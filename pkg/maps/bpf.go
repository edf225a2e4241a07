package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb"
)

// New returns Maps over the kernel's maps. It does not take ownership:
// the caller closes m.
func New(m *socklb.BpfMaps) Maps {
	return &store{
		svc:   ebpfTable[socklb.BpfSvcKey, socklb.BpfSvcValue]{m.SocklbSvcV3},
		be:    ebpfTable[uint32, socklb.BpfBackend]{m.SocklbBeV3},
		names: ebpfTable[uint32, socklb.BpfSvcName]{m.SocklbNameV3},
		aff:   ebpfTable[socklb.BpfAffinityKey, socklb.BpfAffinityValue]{m.SocklbAffV3},
		cnt:   percpuCounters{m.SocklbCntV3},
	}
}

type ebpfTable[K comparable, V any] struct{ m *ebpf.Map }

func (t ebpfTable[K, V]) lookup(k K) (V, bool, error) {
	var v V
	err := t.m.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	return v, err == nil, err
}

func (t ebpfTable[K, V]) put(k K, v V) error { return t.m.Update(&k, &v, ebpf.UpdateAny) }

func (t ebpfTable[K, V]) create(k K, v V) (bool, error) {
	err := t.m.Update(&k, &v, ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		return true, nil
	}
	return false, err
}

func (t ebpfTable[K, V]) remove(k K) error {
	err := t.m.Delete(&k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

func (t ebpfTable[K, V]) all() (map[K]V, error) {
	out := make(map[K]V)
	var (
		k K
		v V
	)
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", t.m, err)
	}
	return out, nil
}

type percpuCounters struct{ m *ebpf.Map }

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
	return err
}

func (c percpuCounters) read(id uint32) (Counters, bool, error) {
	var perCPU []socklb.BpfSvcCounters
	err := c.m.Lookup(&id, &perCPU)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Counters{}, false, nil
	}
	if err != nil {
		return Counters{}, false, err
	}
	var sum Counters
	for _, v := range perCPU {
		sum.Connects += v.Connects
		sum.Refused += v.Refused
	}
	return sum, true, nil
}

func (c percpuCounters) all() (map[uint32]Counters, error) {
	out := make(map[uint32]Counters)
	var (
		id     uint32
		perCPU []socklb.BpfSvcCounters
	)
	it := c.m.Iterate()
	for it.Next(&id, &perCPU) {
		var sum Counters
		for _, v := range perCPU {
			sum.Connects += v.Connects
			sum.Refused += v.Refused
		}
		out[id] = sum
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", c.m, err)
	}
	return out, nil
}

func (c percpuCounters) remove(id uint32) error {
	err := c.m.Delete(&id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// NewStats returns Stats over the kernel's maps; like New, it does not
// take ownership of m.
func NewStats(m *socklb.BpfMaps) Stats { return New(m).(*store) }

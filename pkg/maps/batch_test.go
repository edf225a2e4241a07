package maps

import (
	"maps"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
)

// TestPrivilegedBatchReadsEveryEntry: readBatches and the tables built on
// it see exactly what an iterator sees, for each kind of map socklb reads
// (hash, LRU hash, per-CPU hash, array), across several batches.
func TestPrivilegedBatchReadsEveryEntry(t *testing.T) {
	sandbox.RequirePrivileges(t)
	const entries = 3*batchSize + 17
	newMap := func(typ ebpf.MapType, valueSize uint32) *ebpf.Map {
		t.Helper()
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: typ, KeySize: 4, ValueSize: valueSize, MaxEntries: entries + 100})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.LRUHash, ebpf.Array} {
		t.Run(typ.String(), func(t *testing.T) {
			m := newMap(typ, 8)
			for k := uint32(0); k < entries; k++ {
				if err := m.Put(k, uint64(k)*7+1); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ebpfTable[uint32, uint64]{m, "test"}.all()
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint32]uint64{}
			var (
				k uint32
				v uint64
			)
			for it := m.Iterate(); it.Next(&k, &v); {
				want[k] = v
			}
			if !maps.Equal(got, want) {
				t.Fatalf("batches read %d entries, an iterator %d, or other values", len(got), len(want))
			}
			// An LRU map may evict before it is full; the others hold
			// what was written, and an array every index.
			if typ == ebpf.Hash && len(got) != entries || typ == ebpf.Array && len(got) != int(m.MaxEntries()) {
				t.Fatalf("read %d entries of a %s holding %d", len(got), typ, entries)
			}
			for k, v := range got {
				if k < entries && v != uint64(k)*7+1 {
					t.Fatalf("entry %d = %d, want %d", k, v, uint64(k)*7+1)
				}
			}
			n, err := countBatch[uint32, uint64](m)
			if err != nil || n != len(want) {
				t.Errorf("countBatch = %d, %v; want %d", n, err, len(want))
			}
		})
	}
	t.Run("PerCPUHash", func(t *testing.T) {
		cpus, err := ebpf.PossibleCPU()
		if err != nil {
			t.Fatal(err)
		}
		m := newMap(ebpf.PerCPUHash, 16)
		for k := uint32(0); k < entries; k++ {
			v := make([]socklb.BpfSvcCounters, cpus)
			for c := range v {
				v[c] = socklb.BpfSvcCounters{Connects: uint64(k) + uint64(c), Refused: 1}
			}
			if err := m.Put(k, v); err != nil {
				t.Fatal(err)
			}
		}
		got, err := percpuCounters{m, "test"}.all()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != entries {
			t.Fatalf("read %d entries, want %d", len(got), entries)
		}
		for k := uint32(0); k < entries; k++ {
			want := Counters{Connects: uint64(k)*uint64(cpus) + uint64(cpus*(cpus-1)/2), Refused: uint64(cpus)}
			if got[k] != want {
				t.Fatalf("entry %d = %+v, want %+v", k, got[k], want)
			}
		}
		if n, err := countPerCPU(m); err != nil || n != entries {
			t.Errorf("countPerCPU = %d, %v; want %d", n, err, entries)
		}
	})
}

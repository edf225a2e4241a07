package maps

import (
	"fmt"
	"slices"

	"github.com/socklb/socklb"
)

// Bypass is the pinned bypass map: the network namespace cookies whose
// sockets the programs leave alone (package bypass keeps it).
type Bypass struct {
	t table[uint64, uint32]
}

// NewBypass returns the bypass map of m.
func NewBypass(m *socklb.BpfMaps) *Bypass {
	return &Bypass{t: ebpfTable[uint64, uint32]{m.SocklbBypassV3, socklb.BpfMapSocklbBypassV3}}
}

// Cookies returns every cookie in the map, sorted.
func (b *Bypass) Cookies() ([]uint64, error) {
	all, err := b.t.all()
	if err != nil {
		return nil, fmt.Errorf("read the bypass map: %w", err)
	}
	out := make([]uint64, 0, len(all))
	for c := range all {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

// Has reports whether cookie c is bypassed.
func (b *Bypass) Has(c uint64) (bool, error) {
	_, ok, err := b.t.lookup(c)
	return ok, err
}

// Put bypasses the namespace with cookie c.
func (b *Bypass) Put(c uint64) error { return b.t.put(c, 0) }

// Delete stops bypassing it; a missing cookie is success.
func (b *Bypass) Delete(c uint64) error { return b.t.remove(c) }

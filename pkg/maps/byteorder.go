package maps

import (
	"encoding/binary"
	"net/netip"
)

// The C structs hold addresses and ports in network order (__be32[4],
// __be16) while bpf2go types them as plain integers that cilium/ebpf
// marshals in host order. These helpers are the only place that converts
// between the two. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d),
// as bpf/socklb.h says.

func addrToBE(a netip.Addr) [4]uint32 {
	b := a.Unmap().As16()
	var out [4]uint32
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

func beToAddr(v [4]uint32) netip.Addr {
	var b [16]byte
	for i, w := range v {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

func portToBE16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func be16ToPort(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

package maps

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The C structs hold addresses and ports in network order (__be32, __be16)
// while bpf2go types them as plain integers that cilium/ebpf marshals in
// host order. These helpers are the only place that converts between the two.

func addrToBE32(a netip.Addr) (uint32, error) {
	if !a.Unmap().Is4() {
		return 0, fmt.Errorf("address %s: %w: only IPv4 is programmed", a, ErrUnsupported)
	}
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:]), nil
}

func be32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
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

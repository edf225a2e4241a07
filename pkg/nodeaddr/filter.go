package nodeaddr

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Reasons an interface address is not a node address, as nodeAddr reports
// them (and the unit test checks them).
const (
	skipNoAddress   = "no address"
	skipTentative   = "tentative (duplicate address detection not done)"
	skipDADFailed   = "duplicate address detection failed"
	skipScopeLink   = "link scope"
	skipScopeNone   = "scope nowhere"
	skipUnspecified = "unspecified"
	skipMulticast   = "multicast"
	skipLinkLocal   = "link-local"
	skipBroadcast   = "limited broadcast"
)

// limitedBroadcast is 255.255.255.255, which netip has no predicate for.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// nodeAddr returns the node address that an interface address gives, or
// the reason it gives none. The rules are those of the package comment:
//
//   - the local address (IFA_LOCAL, so for a point-to-point address this
//     side, never the peer), IPv4-mapped IPv6 unmapped, no zone;
//   - not tentative and not DAD-failed: the kernel does not accept traffic
//     for those; optimistic and deprecated IPv6 addresses are kept, the
//     kernel still delivers to them;
//   - scope universe, site or host (loopback addresses have host scope);
//     link scope and scope nowhere are dropped;
//   - a unicast address usable as a destination: not unspecified, not
//     multicast, not 255.255.255.255, not link-local (169.254.0.0/16,
//     fe80::/10, whatever scope it was given), since those need an
//     interface to mean anything.
//
// The state of the interface (up or down) does not matter: the kernel
// answers connect() to an IPv4 address on a down interface locally, and it
// deletes IPv6 addresses itself when their interface goes down.
func nodeAddr(a netlink.Addr) (netip.Addr, string) {
	if a.IPNet == nil {
		return netip.Addr{}, skipNoAddress
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Addr{}, skipNoAddress
	}
	ip = ip.Unmap().WithZone("")
	switch {
	case a.Flags&unix.IFA_F_DADFAILED != 0:
		return ip, skipDADFailed
	case a.Flags&unix.IFA_F_TENTATIVE != 0:
		return ip, skipTentative
	case a.Scope == unix.RT_SCOPE_LINK:
		return ip, skipScopeLink
	case a.Scope == unix.RT_SCOPE_NOWHERE:
		return ip, skipScopeNone
	case ip.IsUnspecified():
		return ip, skipUnspecified
	case ip.IsMulticast():
		return ip, skipMulticast
	case ip.IsLinkLocalUnicast():
		return ip, skipLinkLocal
	case ip == limitedBroadcast:
		return ip, skipBroadcast
	}
	return ip, ""
}

// nodeAddrs turns an address dump into the node address set: sorted
// (IPv4 first, as netip.Addr.Compare orders them) and unique.
func nodeAddrs(list []netlink.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, reason := nodeAddr(a); reason == "" {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// diff returns what is in next but not prev (added) and what is in prev but
// not next (removed). Both inputs must be sorted and unique.
func diff(prev, next []netip.Addr) (added, removed []netip.Addr) {
	i, j := 0, 0
	for i < len(prev) || j < len(next) {
		switch {
		case j == len(next):
			removed = append(removed, prev[i])
			i++
		case i == len(prev):
			added = append(added, next[j])
			j++
		default:
			switch c := prev[i].Compare(next[j]); {
			case c < 0:
				removed = append(removed, prev[i])
				i++
			case c > 0:
				added = append(added, next[j])
				j++
			default:
				i++
				j++
			}
		}
	}
	return added, removed
}

package nodeaddr

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addr builds a netlink.Addr as the kernel reports it: the local address
// with its prefix length.
func addr(t *testing.T, prefix string, scope, flags int) netlink.Addr {
	t.Helper()
	ip, ipnet, err := net.ParseCIDR(prefix)
	if err != nil {
		t.Fatalf("parse %s: %v", prefix, err)
	}
	ipnet.IP = ip
	return netlink.Addr{IPNet: ipnet, Scope: scope, Flags: flags}
}

func TestNodeAddr(t *testing.T) {
	const (
		global = unix.RT_SCOPE_UNIVERSE
		site   = unix.RT_SCOPE_SITE
		link   = unix.RT_SCOPE_LINK
		host   = unix.RT_SCOPE_HOST
	)
	tests := []struct {
		name   string
		addr   netlink.Addr
		want   string // the address kept, "" when dropped
		reason string // why it is dropped
	}{
		{"ipv4 global", addr(t, "198.18.0.7/24", global, 0), "198.18.0.7", ""},
		{"ipv6 global", addr(t, "2001:2::7/64", global, unix.IFA_F_PERMANENT), "2001:2::7", ""},
		{"ipv4 loopback", addr(t, "127.0.0.1/8", host, unix.IFA_F_PERMANENT), "127.0.0.1", ""},
		{"ipv6 loopback", addr(t, "::1/128", host, unix.IFA_F_PERMANENT), "::1", ""},
		{"other loopback address", addr(t, "127.0.0.53/8", host, 0), "127.0.0.53", ""},
		{"host scope", addr(t, "198.18.0.8/32", host, 0), "198.18.0.8", ""},
		{"site scope", addr(t, "198.18.0.9/32", site, 0), "198.18.0.9", ""},
		{"ipv6 unique local", addr(t, "fd00::2/64", global, 0), "fd00::2", ""},
		{"ipv6 nodad", addr(t, "2001:2::8/128", global, unix.IFA_F_NODAD), "2001:2::8", ""},
		{"ipv6 deprecated", addr(t, "2001:2::9/64", global, unix.IFA_F_DEPRECATED), "2001:2::9", ""},
		{"ipv6 optimistic", addr(t, "2001:2::a/64", global, unix.IFA_F_OPTIMISTIC), "2001:2::a", ""},
		{"ipv4-mapped ipv6 unmapped", addr(t, "::ffff:198.18.0.10/128", global, 0), "198.18.0.10", ""},
		{"ipv4 in 16-byte form", netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("198.18.0.11"), Mask: net.CIDRMask(32, 32)}}, "198.18.0.11", ""},
		{"point-to-point keeps the local side", netlink.Addr{
			IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 12).To4(), Mask: net.CIDRMask(32, 32)},
			Peer:  &net.IPNet{IP: net.IPv4(198, 18, 0, 13).To4(), Mask: net.CIDRMask(32, 32)},
		}, "198.18.0.12", ""},

		{"ipv6 tentative", addr(t, "2001:2::b/64", global, unix.IFA_F_TENTATIVE), "", skipTentative},
		{"ipv6 dad failed", addr(t, "2001:2::c/64", global, unix.IFA_F_DADFAILED|unix.IFA_F_TENTATIVE), "", skipDADFailed},
		{"ipv6 link-local", addr(t, "fe80::1/64", link, unix.IFA_F_PERMANENT), "", skipScopeLink},
		{"ipv6 link-local given global scope", addr(t, "fe80::2/64", global, 0), "", skipLinkLocal},
		{"ipv6 link-local, upper end of fe80::/10", addr(t, "febf::1/64", global, 0), "", skipLinkLocal},
		{"ipv4 link-local", addr(t, "169.254.1.1/16", link, 0), "", skipScopeLink},
		{"ipv4 link-local given global scope", addr(t, "169.254.1.2/16", global, 0), "", skipLinkLocal},
		{"ipv4 link scope", addr(t, "198.18.0.14/24", link, 0), "", skipScopeLink},
		{"scope nowhere", addr(t, "198.18.0.15/24", unix.RT_SCOPE_NOWHERE, 0), "", skipScopeNone},
		{"ipv4 unspecified", addr(t, "0.0.0.0/32", global, 0), "", skipUnspecified},
		{"ipv6 unspecified", addr(t, "::/128", global, 0), "", skipUnspecified},
		{"ipv4 multicast", addr(t, "224.0.0.251/32", global, 0), "", skipMulticast},
		{"ipv6 multicast", addr(t, "ff02::1/128", global, 0), "", skipMulticast},
		{"limited broadcast", addr(t, "255.255.255.255/32", global, 0), "", skipBroadcast},
		{"no address", netlink.Addr{}, "", skipNoAddress},
		{"short address", netlink.Addr{IPNet: &net.IPNet{IP: net.IP{1, 2, 3}}}, "", skipNoAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ip, reason := nodeAddr(tt.addr)
			if reason != tt.reason {
				t.Fatalf("nodeAddr(%v) reason %q, want %q", tt.addr, reason, tt.reason)
			}
			if tt.want == "" {
				return
			}
			if want := netip.MustParseAddr(tt.want); ip != want {
				t.Errorf("nodeAddr(%v) = %v, want %v", tt.addr, ip, want)
			}
			if ip.Zone() != "" || ip.Is4In6() {
				t.Errorf("nodeAddr(%v) = %v: zone or mapped form left", tt.addr, ip)
			}
		})
	}
}

func TestNodeAddrs(t *testing.T) {
	list := []netlink.Addr{
		addr(t, "2001:2::7/128", unix.RT_SCOPE_UNIVERSE, 0),
		addr(t, "198.18.0.7/24", unix.RT_SCOPE_UNIVERSE, 0),
		addr(t, "fe80::1/64", unix.RT_SCOPE_LINK, 0),
		addr(t, "::1/128", unix.RT_SCOPE_HOST, 0),
		addr(t, "198.18.0.7/32", unix.RT_SCOPE_UNIVERSE, 0), // same address, another prefix (or interface)
		addr(t, "::ffff:198.18.0.7/128", unix.RT_SCOPE_UNIVERSE, 0),
		addr(t, "127.0.0.1/8", unix.RT_SCOPE_HOST, 0),
	}
	got := nodeAddrs(list)
	want := addrs("127.0.0.1", "198.18.0.7", "::1", "2001:2::7")
	if !slices.Equal(got, want) {
		t.Errorf("nodeAddrs = %v, want %v", got, want)
	}
	if got := nodeAddrs(nil); len(got) != 0 {
		t.Errorf("nodeAddrs(nil) = %v, want empty", got)
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name                  string
		prev, next            []netip.Addr
		wantAdded, wantRemove []netip.Addr
	}{
		{"both empty", nil, nil, nil, nil},
		{"first list", nil, addrs("127.0.0.1", "::1"), addrs("127.0.0.1", "::1"), nil},
		{"all gone", addrs("127.0.0.1", "::1"), nil, nil, addrs("127.0.0.1", "::1")},
		{"same", addrs("127.0.0.1", "::1"), addrs("127.0.0.1", "::1"), nil, nil},
		{
			"both ways",
			addrs("127.0.0.1", "198.18.0.7", "::1"),
			addrs("127.0.0.1", "198.18.0.8", "::1", "2001:2::7"),
			addrs("198.18.0.8", "2001:2::7"),
			addrs("198.18.0.7"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			added, removed := diff(tt.prev, tt.next)
			if !slices.Equal(added, tt.wantAdded) || !slices.Equal(removed, tt.wantRemove) {
				t.Errorf("diff = +%v -%v, want +%v -%v", added, removed, tt.wantAdded, tt.wantRemove)
			}
		})
	}
}

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{Netns: "var/run/netns/x"}); err == nil {
		t.Error("New accepted a relative netns path")
	}
	if _, err := New(Options{Netns: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("New accepted a netns path that does not exist")
	}
	w, err := New(Options{})
	if err != nil {
		t.Fatalf("New with zero options: %v", err)
	}
	if w.HasSynced() || len(w.Addresses()) != 0 {
		t.Errorf("new watcher: synced %v, addresses %v", w.HasSynced(), w.Addresses())
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

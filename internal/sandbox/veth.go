package sandbox

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Wire connects client to server with a veth pair, so that client (another
// "pod" or node) can reach addresses that server holds. The client end
// gets clientAddr and routes to each of routes through the pair; the server
// end gets a route back to clientAddr. Both namespaces must be ours: the
// pair is created inside client and its peer moved straight into server,
// so it never exists in the host's namespace. It goes away with them.
func Wire(client, server *Netns, clientAddr netip.Addr, routes ...netip.Prefix) error {
	if !clientAddr.IsValid() || clientAddr.Is4In6() {
		return fmt.Errorf("wire: invalid client address %v", clientAddr)
	}
	serverFD, err := os.Open(server.Path())
	if err != nil {
		return fmt.Errorf("wire: open %s: %w", server.Path(), err)
	}
	defer serverFD.Close()
	const clientEnd, serverEnd = "veth-srv", "veth-cli"
	// The server may be wired to several clients: name its ends apart.
	peerName := serverEnd + "-" + randomSuffix()[:6]
	err = client.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: clientEnd},
			PeerName:      peerName,
			PeerNamespace: netlink.NsFd(int(serverFD.Fd())),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth pair: %w", err)
		}
		link, err := h.LinkByName(clientEnd)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(link, hostAddr(clientAddr)); err != nil {
			return fmt.Errorf("address %s: %w", clientAddr, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		for _, r := range routes {
			route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(r), Scope: netlink.SCOPE_LINK}
			if err := h.RouteAdd(route); err != nil {
				return fmt.Errorf("route %s: %w", r, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wire %s to %s: %w", client.name, server.name, err)
	}
	err = server.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		link, err := h.LinkByName(peerName)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		back := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(clientAddr, clientAddr.BitLen())), Scope: netlink.SCOPE_LINK}
		return h.RouteAdd(back)
	})
	if err != nil {
		return fmt.Errorf("wire %s to %s: server end: %w", client.name, server.name, err)
	}
	return nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, a.BitLen()))}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

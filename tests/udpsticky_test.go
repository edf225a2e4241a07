package tests

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// Finding 1: an unconnected UDP socket kept its backend while the backend's
// id existed anywhere in the backend map, and ids are shared by Services
// with the same backend. kube-proxy flushes a Service's conntrack entries
// of removed endpoints: the next datagram goes to the Service's current
// set, and nowhere once the Service is gone.

// sendRecv sends one datagram from pc to target and returns the answer's
// text and the address it came from.
func sendRecv(pc net.PacketConn, target string) (name string, from netip.AddrPort, err error) {
	_ = pc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pc.WriteTo([]byte("who"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(target))); err != nil {
		return "", from, err
	}
	buf := make([]byte, 512)
	n, addr, err := pc.ReadFrom(buf)
	if err != nil {
		return "", from, err
	}
	ap := addr.(*net.UDPAddr).AddrPort()
	return strings.TrimSpace(string(buf[:n])), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// socketOn opens unconnected UDP sockets in the test netns until one is
// sent to want by its first datagram to target, and returns it.
func socketOn(t *testing.T, d *datapath, network, target, want string) net.PacketConn {
	t.Helper()
	for range 100 {
		pc, err := d.ns.ListenPacket(network, ":0")
		if err != nil {
			t.Fatal(err)
		}
		name, _, err := sendRecv(pc, target)
		if err != nil {
			pc.Close()
			t.Fatalf("sendto %s: %v", target, err)
		}
		if name == want {
			t.Cleanup(func() { pc.Close() })
			return pc
		}
		pc.Close()
	}
	t.Fatalf("100 sockets sent to %s, none reached %s", target, want)
	return nil
}

// udpPod starts a UDP name server at addr:5353 in the test netns.
func udpPod(t *testing.T, d *datapath, name, addr string) *sandbox.NameServer {
	t.Helper()
	a := netip.MustParseAddr(addr)
	if err := d.ns.AddAddr(netip.PrefixFrom(a, 32)); err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	return sandbox.StartUDPNameServer(t, d.ns, netip.AddrPortFrom(a, 5353), name)
}

func revNATOf(t *testing.T, d *datapath, addr string, port uint16) maps.RevNATID {
	t.Helper()
	svcs, err := d.maps.Services()
	if err != nil {
		t.Fatal(err)
	}
	fe := maps.Frontend{Addr: netip.MustParseAddr(addr), Port: port, Proto: maps.ProtoUDP}
	for _, s := range svcs {
		if s.Frontend == fe {
			return s.RevNATID
		}
	}
	t.Fatalf("%s not published", fe)
	return 0
}

// TestPrivilegedFinding1StickyUDPLeavesRemovedBackend: Services A and B
// both list pod-1; pod-1 leaves A only. A socket that A sent to pod-1 must
// go to A's current set with its next datagram, not to pod-1; an emptied A
// refuses it.
func TestPrivilegedFinding1StickyUDPLeavesRemovedBackend(t *testing.T) {
	d := newDatapath(t)
	udpPod(t, d, "pod-1", "198.18.0.1")
	udpPod(t, d, "pod-2", "198.18.0.2")
	const vipA, vipB = vip + ":53", vip + ":54"
	d.apply(t,
		service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"),
		service(vip, 54, lb.UDP, "198.18.0.1:5353"))

	for _, network := range []string{"udp4", "udp"} {
		t.Run(network, func(t *testing.T) {
			d.apply(t,
				service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"),
				service(vip, 54, lb.UDP, "198.18.0.1:5353"))
			pc := socketOn(t, d, network, vipA, "pod-1")
			for range 5 {
				if name, _, err := sendRecv(pc, vipA); err != nil || name != "pod-1" {
					t.Fatalf("while pod-1 is in A the socket stays on it: %q, %v", name, err)
				}
			}

			// pod-1 leaves A; B still lists it, under the same backend id.
			d.apply(t,
				service(vip, 53, lb.UDP, "198.18.0.2:5353"),
				service(vip, 54, lb.UDP, "198.18.0.1:5353"))
			for i := range 5 {
				name, from, err := sendRecv(pc, vipA)
				if err != nil {
					t.Fatalf("send %d to A after pod-1 left it: %v", i, err)
				}
				if name != "pod-2" {
					t.Fatalf("send %d to A after pod-1 left it reached %s, want pod-2 (A's only backend)", i, name)
				}
				if from.String() != vipA {
					t.Errorf("the answer came from %s, want the VIP %s", from, vipA)
				}
			}
			// B from the same socket is B's own choice, and A again is
			// still pod-2.
			if name, _, err := sendRecv(pc, vipB); err != nil || name != "pod-1" {
				t.Errorf("B: %q, %v; want pod-1", name, err)
			}

			// A without backends refuses at once, like a connect.
			d.apply(t, service(vip, 53, lb.UDP), service(vip, 54, lb.UDP, "198.18.0.1:5353"))
			_, err := pc.WriteTo([]byte("who"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(vipA)))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("sendto an emptied A: %v, want ECONNREFUSED", err)
			}
		})
	}
}

// TestPrivilegedFinding1DeletedServiceVIPUntouched: A is deleted while B
// still lists A's backend; a datagram to A's address from a socket that A
// sent to pod-1 is not rewritten, and pod-1 never receives it. A and B
// share the cluster IP (as two ports of one Service do), so the send is
// refused as one to a port the address no longer has. The ordering barrier: the same socket then
// sends to B, which only pod-1 serves, and reads its answer; the server
// counts before it answers and reads its socket in order, so by then an
// earlier datagram would have been counted.
func TestPrivilegedFinding1DeletedServiceVIPUntouched(t *testing.T) {
	d := newDatapath(t)
	pod1 := udpPod(t, d, "pod-1", "198.18.0.1")
	const vipA, vipB = vip + ":53", vip + ":54"
	d.apply(t,
		service(vip, 53, lb.UDP, "198.18.0.1:5353"),
		service(vip, 54, lb.UDP, "198.18.0.1:5353"))
	pc := socketOn(t, d, "udp4", vipA, "pod-1")

	d.apply(t, service(vip, 54, lb.UDP, "198.18.0.1:5353"))
	before := pod1.Count()
	_, err := pc.WriteTo([]byte("who"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(vipA)))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("sendto the deleted A's address: %v, want ECONNREFUSED (B's cluster IP at a port it does not have)", err)
	}
	name, from, err := sendRecv(pc, vipB)
	if err != nil || name != "pod-1" {
		t.Fatalf("barrier: sendto B: %q, %v; want pod-1", name, err)
	}
	if from.String() != vipB {
		t.Errorf("B's answer came from %s, want %s", from, vipB)
	}
	if got := pod1.Count() - before; got != 1 {
		t.Errorf("pod-1 received %d datagrams after A was deleted, want 1 (B's): the one to A's address reached it", got)
	}
}

// TestPrivilegedFinding1StickySendsAreCounted: every datagram rewritten to
// a backend counts as a connect of its frontend, also those of a socket
// that keeps its backend.
func TestPrivilegedFinding1StickySendsAreCounted(t *testing.T) {
	d := newDatapath(t)
	udpPod(t, d, "pod-1", "198.18.0.1")
	udpPod(t, d, "pod-2", "198.18.0.2")
	d.apply(t, service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"))
	id := revNATOf(t, d, vip, 53)

	const sockets, sends = 3, 7
	for i := range sockets {
		pc, err := d.ns.ListenPacket("udp4", ":0")
		if err != nil {
			t.Fatal(err)
		}
		var first string
		for j := range sends {
			name, _, err := sendRecv(pc, vip+":53")
			if err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				first = name
			} else if name != first {
				t.Fatalf("socket %d went to %s, then to %s", i, first, name)
			}
		}
		pc.Close()
	}
	c, err := d.maps.Counters(id)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(sockets * sends); c.Connects != want || c.Refused != 0 {
		t.Errorf("counters after %d sockets × %d sends: connects %d, refused %d; want %d, 0",
			sockets, sends, c.Connects, c.Refused, want)
	}
	t.Logf("%d sends counted", c.Connects)
}

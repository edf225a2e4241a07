package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/lb"
)

// startDNS runs a tiny DNS server on addr inside ns that answers every A
// question with answer, so a test can tell which backend replied.
func startDNS(t *testing.T, ns *sandbox.Netns, addr netip.AddrPort, answer netip.Addr) *atomic.Int64 {
	t.Helper()
	pc, err := ns.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			var p dnsmessage.Parser
			hdr, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if q.Type == dnsmessage.TypeA {
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5},
					dnsmessage.AResource{A: answer.As4()})
			}
			msg, err := b.Finish()
			if err != nil {
				continue
			}
			served.Add(1)
			_, _ = pc.WriteTo(msg, from)
		}
	}()
	return &served
}

// TestPrivilegedDNSThroughUDPClusterIP: Go's own resolver, pointed at a
// UDP ClusterIP, gets answers from the backend DNS servers; the socket
// shows the VIP as its peer.
func TestPrivilegedDNSThroughUDPClusterIP(t *testing.T) {
	d := newDatapath(t)
	answers := map[string]string{"198.18.9.1": "dns-1", "198.18.9.2": "dns-2"}
	for i, ip := range []string{"198.18.0.1", "198.18.0.2"} {
		a := netip.MustParseAddr(ip)
		if err := d.ns.AddAddr(netip.PrefixFrom(a, 32)); err != nil {
			t.Fatal(err)
		}
		startDNS(t, d.ns, netip.AddrPortFrom(a, 5353), netip.MustParseAddr(fmt.Sprintf("198.18.9.%d", i+1)))
	}
	d.apply(t, service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"))

	var peers []string
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, err := d.ns.Dial(ctx, "udp4", vip+":53")
		if err == nil {
			peers = append(peers, c.RemoteAddr().String())
		}
		return c, err
	}}
	got := map[string]int{}
	for range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ips, err := r.LookupNetIP(ctx, "ip4", "web.test.svc.cluster.local.")
		cancel()
		if err != nil {
			t.Fatalf("lookup through the UDP ClusterIP: %v", err)
		}
		got[answers[ips[0].String()]]++
	}
	t.Logf("40 lookups through %s:53: %v", vip, got)
	if got["dns-1"] == 0 || got["dns-2"] == 0 {
		t.Errorf("answers came from %v, want both DNS backends", got)
	}
	for _, p := range peers {
		if p != vip+":53" {
			t.Fatalf("resolver socket's peer is %s, want the VIP %s:53", p, vip)
		}
	}
}

// TestPrivilegedUnconnectedUDPRepliesComeFromTheVIP: sendto the VIP, then
// recvfrom sees the VIP as the source, for an AF_INET socket and for a
// dual-stack AF_INET6 one (whose reply arrives v4-mapped), and the same
// socket keeps its backend.
func TestPrivilegedUnconnectedUDPRepliesComeFromTheVIP(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "dns-1", "198.18.0.1", 5353)
	d.pod(t, "dns-2", "198.18.0.2", 5353)
	d.apply(t, service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"))
	target := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(vip + ":53"))

	for _, network := range []string{"udp4", "udp"} {
		t.Run(network, func(t *testing.T) {
			seen := map[string]bool{}
			for range 20 {
				pc, err := d.ns.ListenPacket(network, ":0")
				if err != nil {
					t.Fatal(err)
				}
				var first string
				for i := range 5 {
					_ = pc.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := pc.WriteTo([]byte("who"), target); err != nil {
						t.Fatal(err)
					}
					buf := make([]byte, 64)
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						t.Fatal(err)
					}
					src := from.(*net.UDPAddr).AddrPort()
					if netip.AddrPortFrom(src.Addr().Unmap(), src.Port()).String() != vip+":53" {
						t.Fatalf("reply came from %s, want the VIP %s:53", src, vip)
					}
					name := strings.TrimSpace(string(buf[:n]))
					if i == 0 {
						first = name
					} else if name != first {
						t.Fatalf("one socket was sent to %s, then to %s", first, name)
					}
				}
				seen[first] = true
				pc.Close()
			}
			if len(seen) != 2 {
				t.Errorf("20 sockets reached %v, want both backends", seen)
			}
		})
	}
}

func TestPrivilegedGetpeernameShowsTheVIP(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "pod-1", "198.18.0.1", 8080)
	d.apply(t, service(vip, 80, lb.TCP, "198.18.0.1:8080"), service(vip, 53, lb.UDP, "198.18.0.1:8080"))
	for _, tc := range []struct{ network, addr string }{{"tcp4", vip + ":80"}, {"udp4", vip + ":53"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := d.ns.Dial(ctx, tc.network, tc.addr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := c.RemoteAddr().String(); got != tc.addr {
			t.Errorf("%s: getpeername = %s, want %s", tc.network, got, tc.addr)
		}
		c.Close()
	}
}

const vip6 = "2001:2:0:19::10"

// TestPrivilegedIPv6 runs the IPv4 balance, refusal and update tests over
// IPv6, and a dual-stack service over both families.
func TestPrivilegedIPv6(t *testing.T) {
	t.Run("balance", func(t *testing.T) {
		d := newDatapath(t)
		for i := 1; i <= 3; i++ {
			d.pod(t, fmt.Sprintf("pod-%d", i), fmt.Sprintf("2001:2::%d", i), 8080)
		}
		d.apply(t, service(vip6, 80, lb.TCP, "[2001:2::1]:8080", "[2001:2::2]:8080", "[2001:2::3]:8080"))
		got := map[string]int{}
		for range 300 {
			name, err := d.ask("tcp6", "["+vip6+"]:80")
			if err != nil {
				t.Fatal(err)
			}
			got[name]++
		}
		t.Logf("300 TCP connects to [%s]:80: %v", vip6, got)
		for i := 1; i <= 3; i++ {
			if share := float64(got[fmt.Sprintf("pod-%d", i)]) / 300; share < 0.20 || share > 0.47 {
				t.Errorf("pod-%d got %.0f%%, want 20%%..47%%", i, share*100)
			}
		}
		if name, err := d.ask("udp6", "["+vip6+"]:80"); err == nil {
			t.Errorf("UDP to a TCP-only IPv6 frontend reached %s", name)
		}
	})
	t.Run("refusal", func(t *testing.T) {
		d := newDatapath(t)
		d.apply(t, service(vip6, 80, lb.TCP))
		if _, err := d.ask("tcp6", "["+vip6+"]:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("empty IPv6 service: %v, want ECONNREFUSED", err)
		}
		if _, err := d.ask("tcp6", "[2001:2:0:19::99]:80"); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("IPv6 address that is no service: %v, want ENETUNREACH (untouched)", err)
		}
	})
	t.Run("update under load", func(t *testing.T) {
		swapUnderLoad(t, newDatapath(t), vip6, "2001:2::%d")
	})
	t.Run("dual-stack", func(t *testing.T) {
		d := newDatapath(t)
		d.pod(t, "pod-v4", "198.18.0.1", 8080)
		d.pod(t, "pod-v6", "2001:2::1", 8080)
		d.apply(t, service(vip, 80, lb.TCP, "198.18.0.1:8080"), service(vip6, 80, lb.TCP, "[2001:2::1]:8080"))
		if name, err := d.ask("tcp4", vip+":80"); err != nil || name != "pod-v4" {
			t.Errorf("IPv4 frontend: %q, %v", name, err)
		}
		if name, err := d.ask("tcp6", "["+vip6+"]:80"); err != nil || name != "pod-v6" {
			t.Errorf("IPv6 frontend: %q, %v", name, err)
		}
		// An AF_INET6 socket connecting to the IPv4-mapped VIP runs the
		// connect6 hook only; it must still reach the IPv4 backend.
		name, peer, err := dialMapped(d.ns, vip, 80)
		if err != nil || name != "pod-v4" {
			t.Errorf("AF_INET6 socket to ::ffff:%s: %q, %v", vip, name, err)
		}
		if want := "::ffff:" + vip; peer != want {
			t.Errorf("its getpeername = %s, want %s", peer, want)
		}
	})
}

// dialMapped connects an AF_INET6 TCP socket to ::ffff:v4:port inside ns
// and returns the first line the server sends and the peer address the
// socket reports.
func dialMapped(ns *sandbox.Netns, v4 string, port int) (name, peer string, err error) {
	var fd int
	err = ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		sa := &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:" + v4).As16()}
		return unix.Connect(fd, sa)
	})
	if fd > 0 {
		defer unix.Close(fd)
	}
	if err != nil {
		return "", "", err
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "", "", err
	}
	if sa6, ok := sa.(*unix.SockaddrInet6); ok {
		peer = netip.AddrFrom16(sa6.Addr).String()
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", peer, err
	}
	return strings.TrimSpace(string(buf[:n])), peer, nil
}

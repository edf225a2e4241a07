package sandbox

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// NameServer is a backend "pod" inside a test netns. The TCP kind answers
// every connection with its name and a newline, then closes; the UDP kind
// answers every datagram with its name. Both count what they served.
type NameServer struct {
	name  string
	addr  netip.AddrPort
	count atomic.Int64

	closer    io.Closer
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]struct{} // open TCP connections, closed by Close
	closed    bool
	closeOnce sync.Once
	closeErr  error
}

// connTimeout bounds how long one TCP connection may hold a server goroutine.
const connTimeout = 5 * time.Second

// StartTCPNameServer serves name on TCP addr inside ns until the test ends.
// Port 0 picks a free port; see [NameServer.Addr].
func StartTCPNameServer(t testing.TB, ns *Netns, addr netip.AddrPort, name string) *NameServer {
	t.Helper()
	s, cleanup, err := RunTCPNameServer(ns, addr, name)
	if err != nil {
		t.Fatalf("start TCP name server %q: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("stop TCP name server %q: %v", name, err)
		}
	})
	return s
}

// StartUDPNameServer serves name on UDP addr inside ns until the test ends.
func StartUDPNameServer(t testing.TB, ns *Netns, addr netip.AddrPort, name string) *NameServer {
	t.Helper()
	s, cleanup, err := RunUDPNameServer(ns, addr, name)
	if err != nil {
		t.Fatalf("start UDP name server %q: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("stop UDP name server %q: %v", name, err)
		}
	})
	return s
}

// RunTCPNameServer is StartTCPNameServer for programs; cleanup (same as
// Close) stops it and waits for its goroutines.
func RunTCPNameServer(ns *Netns, addr netip.AddrPort, name string) (*NameServer, func() error, error) {
	l, err := ns.Listen("tcp", addr.String())
	if err != nil {
		return nil, nil, err
	}
	s := &NameServer{name: name, addr: unmapAddrPort(l.Addr().(*net.TCPAddr).AddrPort()), closer: l}
	s.wg.Add(1)
	go s.serveTCP(l)
	return s, s.Close, nil
}

// RunUDPNameServer is StartUDPNameServer for programs; cleanup (same as
// Close) stops it and waits for its goroutine.
func RunUDPNameServer(ns *Netns, addr netip.AddrPort, name string) (*NameServer, func() error, error) {
	pc, err := ns.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, nil, err
	}
	s := &NameServer{name: name, addr: unmapAddrPort(pc.LocalAddr().(*net.UDPAddr).AddrPort()), closer: pc}
	s.wg.Add(1)
	go s.serveUDP(pc)
	return s, s.Close, nil
}

// Name is what the server answers.
func (s *NameServer) Name() string { return s.name }

// Addr is the address the server listens on (with the real port).
func (s *NameServer) Addr() netip.AddrPort { return s.addr }

// Count is how many connections (TCP) or datagrams (UDP) the server has
// answered. It is incremented before the answer is sent, so a client that
// has read the answer sees it counted.
func (s *NameServer) Count() int64 { return s.count.Load() }

// Close stops the server and waits for its goroutines. It is idempotent.
func (s *NameServer) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.closer.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s.closeErr
}

func (s *NameServer) serveTCP(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: back off, keep serving
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		if s.conns == nil {
			s.conns = map[net.Conn]struct{}{}
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.answerTCP(c)
	}
}

// answerTCP sends the name, half-closes, and drains what the client sent
// until it closes, so the client never sees a reset instead of the name.
func (s *NameServer) answerTCP(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(connTimeout))
	s.count.Add(1)
	if _, err := io.WriteString(c, s.name+"\n"); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, c)
}

func (s *NameServer) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP error reported on the socket
		}
		s.count.Add(1)
		pc.WriteTo([]byte(s.name), from)
	}
}

func (s *NameServer) String() string {
	return fmt.Sprintf("%s@%s", s.name, s.addr)
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

// finding9Bound bounds each wait of this file's tests for an event. A
// working system gets there in well under a second; only a failing test
// waits this long, so it measures nothing.
const finding9Bound = 2 * time.Minute

// finding9Await polls cond until it holds, and fails the test naming
// what it waited for if it still does not after finding9Bound.
func finding9Await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(finding9Bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", finding9Bound, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The sticky Service of TestPrivilegedFinding9AffinityExpires.
const (
	stickyVIP = "198.19.0.30"
	stickyFE  = stickyVIP + ":80/TCP"
	// stickyTimeout is its sessionAffinityConfig.clientIP.timeoutSeconds.
	stickyTimeout = 1
)

// stickyYAML is a ClientIP-affinity Service with the given timeout and
// ready pods (198.18.0.N:8080).
func stickyYAML(timeoutSeconds int, pods ...int) string {
	var eps strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&eps, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", p)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: test}
spec:
  clusterIP: %s
  ports: [{name: http, port: 80, targetPort: 8080}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: %d}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-1
  namespace: test
  labels: {kubernetes.io/service-name: sticky}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
%s`, stickyVIP, timeoutSeconds, eps.String())
}

// stickyPick is one connect to the sticky Service: the pod that answered
// and the affinity entry the connect left, whose last_used_ns is the
// kernel's boot clock at that connect.
type stickyPick struct {
	pod  string
	last uint64
}

// TestPrivilegedFinding9AffinityExpires: with sessionAffinity ClientIP and
// timeoutSeconds 1 (from a services file, through the agent), one client
// sticks to one backend for as long as it connects at least once a
// timeout, well past the timeout in total: the timeout is idle time.
// Once a timeout passed without a connect the entry has expired and the
// next connect picks afresh; over up to 20 such rounds some pick is
// another backend (all 20 on the same one: 3^-20), and the client then
// sticks to that one.
//
// The test reads the affinity map (socklb_aff_v3) after every connect,
// and judges each connect by the kernel's own rule (bpf/socklb.c,
// lb_affinity): the entry's last_used_ns is the connect's time, and a
// connect whose time is within timeout of the previous one's must stay on
// its backend, one later is free. So it asserts nothing about how long
// anything took: a connect delayed past the timeout by a busy machine is
// a free pick, and counted as such.
func TestPrivilegedFinding9AffinityExpires(t *testing.T) {
	e := newAgentEnv(t, stickyYAML(stickyTimeout, 1, 2, 3))
	e.pods(t, 3, 8080)
	e.startAgent(t)
	e.waitInspect(t, "the sticky Service with 3 backends", func(r map[string]inspectRow) bool {
		return len(r[stickyFE].Backends) == 3
	})

	pinned, err := loader.OpenPinnedMaps(e.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pinned.Close() })
	m := maps.New(pinned)
	svcs, err := m.Services()
	if err != nil {
		t.Fatal(err)
	}
	var svc maps.Service
	for _, s := range svcs {
		if s.Frontend.String() == stickyFE {
			svc = s
		}
	}
	if svc.Flags&maps.FlagAffinity == 0 || svc.AffinityTimeout != stickyTimeout {
		t.Fatalf("the sticky frontend in the maps: %+v; want the affinity flag and a %d s timeout", svc, stickyTimeout)
	}
	timeout := uint64(stickyTimeout * time.Second)
	bes, err := m.Backends()
	if err != nil {
		t.Fatal(err)
	}
	podOf := map[uint32]string{}
	for id, b := range bes {
		podOf[uint32(id)] = fmt.Sprintf("pod-%d", b.Addr.As4()[3])
	}
	cookie := netnsCookie(t, e.ns)

	connect := func() stickyPick {
		t.Helper()
		before := bootNanos(t)
		pod, err := finding9Ask(e.ns, stickyVIP+":80")
		if err != nil {
			t.Fatal(err)
		}
		after := bootNanos(t)
		v := affinityEntry(t, pinned.SocklbAffV3, svc.RevNATID, cookie)
		if podOf[v.BackendId] != pod {
			t.Fatalf("the connect reached %s; its affinity entry names backend %d (%s)", pod, v.BackendId, podOf[v.BackendId])
		}
		// The two clocks are one (CLOCK_BOOTTIME); the slack covers the
		// kernel's fast accessor, which may lag a reader by a little.
		const slack = uint64(time.Millisecond)
		if v.LastUsedNs+slack < before || v.LastUsedNs > after+slack {
			t.Fatalf("the affinity entry's last_used_ns %d is not the connect's time (between %d and %d)", v.LastUsedNs, before, after)
		}
		return stickyPick{pod, v.LastUsedNs}
	}

	// Stickiness: connects paced well inside the timeout, until a run of
	// them that all had to stick spans more than twice the timeout.
	first := connect()
	prev, runStart, runLen := first, first, 0
	for attempt := 0; runLen < 40 || prev.last-runStart.last <= 2*timeout; attempt++ {
		if attempt == 400 {
			t.Fatalf("no unbroken run of 40 connects over %v within the timeout in 400 attempts (each gap over the timeout restarts the run)",
				2*time.Duration(timeout))
		}
		time.Sleep(time.Duration(timeout) / 20) // pacing only; the gap is read from the kernel
		p := connect()
		gap := p.last - prev.last
		if gap <= timeout {
			if p.pod != prev.pod {
				t.Fatalf("connect %v after the previous one (timeout %v) went to %s, not %s: affinity broken",
					time.Duration(gap), time.Duration(timeout), p.pod, prev.pod)
			}
			runLen++
		} else {
			t.Logf("%v between two connects, over the timeout (a busy machine): a free pick, %s; the run restarts",
				time.Duration(gap), p.pod)
			runStart, runLen = p, 0
		}
		prev = p
	}
	t.Logf("%d connects stuck to %s over %v, with the timeout at %v", runLen+1, prev.pod,
		time.Duration(prev.last-runStart.last), time.Duration(timeout))

	// Expiry: wait, by the kernel's clock, until a timeout has passed
	// since the last connect, and connect again.
	moved := false
	for round := 1; round <= 20 && !moved; round++ {
		for {
			now := bootNanos(t)
			if now > prev.last+timeout+uint64(time.Millisecond) {
				break
			}
			time.Sleep(time.Duration(prev.last + timeout + uint64(time.Millisecond) - now))
		}
		p := connect()
		if gap := p.last - prev.last; gap <= timeout {
			t.Fatalf("round %d: the kernel saw the connect %v after the previous one, within the timeout, though the test waited past it",
				round, time.Duration(gap))
		}
		t.Logf("round %d: after the entry expired, %s picked (before: %s)", round, p.pod, prev.pod)
		moved = p.pod != prev.pod
		prev = p
	}
	if !moved {
		t.Fatalf("20 connects, each after the affinity entry expired, all went to %s: expiry does not free the pick", prev.pod)
	}
	// The fresh pick is sticky in turn.
	for range 10 {
		p := connect()
		if gap := p.last - prev.last; gap <= timeout && p.pod != prev.pod {
			t.Fatalf("after the new pick %s, a connect %v later went to %s", prev.pod, time.Duration(gap), p.pod)
		}
		prev = p
	}
}

// finding9Ask connects to addr over TCP from inside ns and returns the
// greeting line of the backend, as testagent.Ask does, with finding9Bound
// as its only time limit.
func finding9Ask(ns *sandbox.Netns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), finding9Bound)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return finding9Exchange(c, "tcp4")
}

// finding9Exchange is exchange with finding9Bound as its only time limit
// (a UDP answer on loopback is not lost, only late on a busy machine):
// it sends on a UDP socket and reads one answer, or reads the greeting
// line of a TCP backend. The connection has no deadline afterwards.
func finding9Exchange(c net.Conn, network string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(finding9Bound))
	defer c.SetDeadline(time.Time{})
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("who")); err != nil {
			return "", err
		}
		buf := make([]byte, 128)
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
	// Byte by byte: what follows the greeting is the test's to read.
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
}

// bootNanos is CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns.
func bootNanos(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// netnsCookie is the cookie of ns, which keys a client's affinity entries.
func netnsCookie(t *testing.T, ns *sandbox.Netns) uint64 {
	t.Helper()
	var cookie uint64
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		t.Fatalf("netns cookie of %s: %v", ns, err)
	}
	return cookie
}

// affinityEntry returns the one affinity entry of frontend id, which must
// be the client's (netns cookie).
func affinityEntry(t *testing.T, m *ebpf.Map, id maps.RevNATID, cookie uint64) socklb.BpfAffinityValue {
	t.Helper()
	var (
		k     socklb.BpfAffinityKey
		v     socklb.BpfAffinityValue
		found []socklb.BpfAffinityValue
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if k.RevNatId != uint32(id) {
			continue
		}
		if k.NetnsCookie != cookie {
			t.Fatalf("an affinity entry of frontend %d for netns cookie %d; the only client is %d", id, k.NetnsCookie, cookie)
		}
		found = append(found, v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("%d affinity entries for frontend %d, want the client's one", len(found), id)
	}
	return found[0]
}

// The Service of TestPrivilegedFinding9DestroyTCPEndToEnd: a TCP port
// served by echo servers on 7070 and a UDP port served by name servers on
// 5353, as a DNS Service has both.
const (
	dnsVIP          = "198.19.0.40"
	dnsTCP, dnsUDP  = dnsVIP + ":53/TCP", dnsVIP + ":53/UDP"
	echoPort        = 7070
	nameServerPort  = 5353
	destroyedLogMsg = `msg="destroyed sockets of removed backends" sockets=`
)

func dnsYAML(pods ...int) string {
	var eps strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&eps, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", p)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: dns, namespace: test}
spec:
  clusterIP: %s
  ports:
  - {name: tcp, port: 53, protocol: TCP, targetPort: %d}
  - {name: udp, port: 53, protocol: UDP, targetPort: %d}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: test
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports: [{name: tcp, port: %d, protocol: TCP}, {name: udp, port: %d, protocol: UDP}]
endpoints:
%s`, dnsVIP, echoPort, nameServerPort, echoPort, nameServerPort, eps.String())
}

// TestPrivilegedFinding9DestroyTCPEndToEnd runs the agent as a process:
// when a pod leaves the Service's file, the established TCP sockets to it
// from the test's netns are destroyed with --destroy-tcp (closed in the
// kernel; a read fails with ECONNABORTED, a write with EPIPE), and
// without the flag they stay established and carry data. The connected
// UDP sockets to that pod are destroyed either way (the agent always
// does that), so the agent's log line and socklb_sockets_destroyed_total
// show that the destruction pass for the pod's departure ran before any
// socket is judged. Sockets to the pod that stays always live on.
func TestPrivilegedFinding9DestroyTCPEndToEnd(t *testing.T) {
	sandbox.RequirePrivileges(t)
	requireProbedFeature(t, loader.FeatSockDestroy)
	for _, tc := range []struct {
		name       string
		destroyTCP bool
	}{
		{"with --destroy-tcp", true},
		{"without --destroy-tcp", false},
	} {
		t.Run(tc.name, func(t *testing.T) { destroyTCPEndToEnd(t, tc.destroyTCP) })
	}
}

func destroyTCPEndToEnd(t *testing.T, destroyTCP bool) {
	e := newAgentEnv(t, dnsYAML(1, 2))
	e.pods(t, 2, nameServerPort)
	for i := 1; i <= 2; i++ {
		startEchoPod(t, e.ns, fmt.Sprintf("pod-%d", i), netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), echoPort))
	}
	var args []string
	if destroyTCP {
		args = append(args, "--destroy-tcp")
	}
	a := e.startHTTPAgent(t, args...)
	e.waitInspect(t, "both frontends with 2 backends", func(r map[string]inspectRow) bool {
		return len(r[dnsTCP].Backends) == 2 && len(r[dnsUDP].Backends) == 2
	})

	// An established TCP socket, and the pod it reached leaves; then
	// sockets of both kinds to both pods. All stay open to the end, so
	// the number the agent must destroy is known.
	tcp := map[string][]net.Conn{}
	udp := map[string][]net.Conn{}
	dial := func(network string, into map[string][]net.Conn) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := e.ns.Dial(ctx, network, dnsVIP+":53")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		name, err := finding9Exchange(c, network)
		if err != nil {
			t.Fatalf("%s to %s: %v", network, c.RemoteAddr(), err)
		}
		into[name] = append(into[name], c)
		return name
	}
	gone := dial("tcp4", tcp)
	stays := map[string]string{"pod-1": "pod-2", "pod-2": "pod-1"}[gone]
	for range 100 {
		if len(tcp[stays]) > 0 && len(udp[gone]) > 0 && len(udp[stays]) > 0 {
			break
		}
		if len(tcp[stays]) == 0 {
			dial("tcp4", tcp)
		}
		dial("udp4", udp)
	}
	if len(tcp[stays]) == 0 || len(udp[gone]) == 0 || len(udp[stays]) == 0 {
		t.Fatalf("100 connects of each kind did not reach both pods: TCP %v, UDP %v", counts(tcp), counts(udp))
	}
	t.Logf("%s leaves; sockets open: TCP %v, UDP %v", gone, counts(tcp), counts(udp))
	want := len(udp[gone])
	if destroyTCP {
		want += len(tcp[gone])
	}

	e.writeServices(t, dnsYAML(map[string]int{"pod-1": 2, "pod-2": 1}[gone]))
	e.waitInspect(t, gone+" gone from both frontends", func(r map[string]inspectRow) bool {
		return len(r[dnsTCP].Backends) == 1 && len(r[dnsUDP].Backends) == 1
	})
	// The barrier: the agent logged the pass for the departure (it
	// closed the UDP sockets), and its metric counts the same. The pass
	// destroys sockets before it is logged.
	finding9Await(t, "a destruction pass in the agent's log", func() bool {
		return strings.Contains(a.Logs(), destroyedLogMsg)
	})
	if got := destroyedInLog(t, a.Logs()); got != want {
		t.Errorf("the agent's log says it destroyed %d sockets, want %d (UDP %d, TCP %d, destroy-tcp %v)",
			got, want, len(udp[gone]), len(tcp[gone]), destroyTCP)
	}
	if got := a.metric(t, "socklb_sockets_destroyed_total"); got != float64(want) {
		t.Errorf("socklb_sockets_destroyed_total = %v, want %d", got, want)
	}

	// The kernel's view of each TCP socket to the pod that left, which
	// asks the socket nothing: closed (destroyed), or still established.
	for _, c := range tcp[gone] {
		state := tcpState(t, c)
		switch {
		case destroyTCP && state != tcpClose:
			t.Errorf("with --destroy-tcp, a TCP socket to %s, which left, is in state %d, not closed (%d)", gone, state, tcpClose)
		case destroyTCP:
			// Closed: the read returns at once, with why.
			_ = c.SetReadDeadline(time.Now().Add(finding9Bound))
			if n, err := c.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNABORTED) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("read on the destroyed TCP socket to %s: %d bytes, %v; want ECONNABORTED", gone, n, err)
			}
		case state != tcpEstablished:
			t.Errorf("without --destroy-tcp, a TCP socket to %s, which left, is in state %d, not established (%d)", gone, state, tcpEstablished)
		}
	}
	for _, c := range udp[gone] {
		if name, err := finding9Exchange(c, "udp4"); err == nil {
			t.Errorf("the UDP socket to %s, which left, still works (answer %q)", gone, name)
		}
	}
	for _, c := range udp[stays] {
		if name, err := finding9Exchange(c, "udp4"); err != nil || name != stays {
			t.Errorf("the UDP socket to %s, which stays: %q, %v", stays, name, err)
		}
	}
	for _, c := range tcp[gone] {
		err := echo(c)
		switch {
		case destroyTCP && err == nil:
			t.Errorf("the TCP socket to %s, which left, still carries data with --destroy-tcp", gone)
		case destroyTCP && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNABORTED) && !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("write on the destroyed TCP socket: %v, want EPIPE, ECONNABORTED or ECONNRESET", err)
		case !destroyTCP && err != nil:
			t.Errorf("without --destroy-tcp, the TCP socket to %s, which left, broke: %v", gone, err)
		}
	}
	for _, c := range tcp[stays] {
		if err := echo(c); err != nil {
			t.Errorf("the TCP socket to %s, which stays: %v", stays, err)
		}
	}
}

// TCP states (include/net/tcp_states.h), as TCP_INFO reports them.
const (
	tcpEstablished = 1
	tcpClose       = 7
)

// tcpState is the kernel's state of a TCP connection.
func tcpState(t *testing.T, c net.Conn) uint8 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		info *unix.TCPInfo
		gerr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("TCP_INFO: %v", gerr)
	}
	return info.State
}

// destroyedInLog sums the sockets of the agent's destruction passes.
func destroyedInLog(t *testing.T, logs string) int {
	t.Helper()
	sum := 0
	for _, m := range regexp.MustCompile(regexp.QuoteMeta(destroyedLogMsg)+`(\d+)`).FindAllStringSubmatch(logs, -1) {
		n, err := strconv.Atoi(m[1])
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

func counts(m map[string][]net.Conn) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// echo sends a line on a connection to an echo pod and reads it back.
func echo(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(finding9Bound))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo: %q", buf)
	}
	return nil
}

// startEchoPod serves TCP on addr inside ns (addr must be on its lo): each
// connection gets name and a newline, then everything it sends back,
// with no time limit, until the client closes. Stopped when the test
// ends.
func startEchoPod(t *testing.T, ns *sandbox.Netns, name string, addr netip.AddrPort) {
	t.Helper()
	l, err := ns.Listen("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  = map[net.Conn]bool{}
		closed bool
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err == nil {
					_, _ = io.Copy(c, c)
				}
			})
		}
	})
}

// requireProbedFeature stops the test unless the kernel has the feature,
// as the loader's probe finds (sandbox.RequireFeature: a skip naming it in
// the kernel matrix's VMs, a failure elsewhere).
func requireProbedFeature(t *testing.T, name string) {
	t.Helper()
	for _, f := range loader.ProbeFeatures() {
		if f.Name == name {
			sandbox.RequireFeature(t, f.Available, fmt.Sprintf("%s [>= %s]", f.Name, f.MinKernel), f.Detail)
			return
		}
	}
	t.Fatalf("the loader probes no feature %q", name)
}

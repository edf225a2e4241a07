package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/why"
)

// The outlier tests run the agent with short ejections, so that growth
// and re-admission take seconds.
var outlierFlags = []string{"--outlier-base-ejection=2s", "--outlier-max-ejection=1m"}

// outlierYAML is Service web (198.19.0.10:80 → 8080) over 198.18.0.1..n,
// with extra annotations.
func outlierYAML(n int, annotations string) string {
	var eps strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&eps, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", i)
	}
	return `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: test
  annotations: {` + annotations + `}
spec:
  clusterIP: 198.19.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: test
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
` + eps.String()
}

const outlierVIP = "198.19.0.10:80"

// killablePod is a pod whose TCP server the test stops and starts.
type killablePod struct {
	ns   *sandbox.Netns
	addr netip.AddrPort
	name string
	stop func() error
}

func newKillablePod(t *testing.T, ns *sandbox.Netns, name, addr string) *killablePod {
	t.Helper()
	p := &killablePod{ns: ns, addr: netip.AddrPortFrom(netip.MustParseAddr(addr), 8080), name: name}
	if err := ns.AddAddr(netip.PrefixFrom(p.addr.Addr(), 32)); err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	p.start(t)
	t.Cleanup(func() { p.kill(t) })
	return p
}

func (p *killablePod) start(t *testing.T) {
	t.Helper()
	_, stop, err := sandbox.RunTCPNameServer(p.ns, p.addr, p.name)
	if err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.stop = stop
}

// kill closes the listener: connects to it are refused (RST).
func (p *killablePod) kill(t *testing.T) {
	t.Helper()
	if p.stop != nil {
		if err := p.stop(); err != nil {
			t.Errorf("stop %s: %v", p.name, err)
		}
		p.stop = nil
	}
}

// slotBackends reads, from the pinned maps, the backends the kernel
// gives the frontend now.
func slotBackends(t *testing.T, bpffs, frontend string) []string {
	t.Helper()
	pinned, err := loader.OpenPinnedMaps(bpffs)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	m := maps.New(pinned)
	svcs, err := m.Services()
	if err != nil {
		t.Fatal(err)
	}
	bes, err := m.Backends()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Frontend.String() == frontend {
			var out []string
			for _, id := range s.Backends {
				out = append(out, bes[id].String())
			}
			return out
		}
	}
	return nil
}

// tally connects n times in a row and counts the answers by name, and
// the errors by kind.
func tally(ns *sandbox.Netns, n int, timeout time.Duration) (names map[string]int, refused, timedOut int, other error) {
	names = map[string]int{}
	for range n {
		name, err := askWithin(ns, outlierVIP, timeout)
		switch {
		case err == nil:
			names[name]++
		case errors.Is(err, syscall.ECONNREFUSED):
			refused++
		case isTimeout(err):
			timedOut++
		default:
			return names, refused, timedOut, err
		}
	}
	return names, refused, timedOut, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func askWithin(ns *sandbox.Netns, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// ejectedUntil is the end of the agent's ejection of backend, from its
// /status; zero when it is not ejected.
func (a *httpAgent) ejectedUntil(t *testing.T, backend string) time.Time {
	t.Helper()
	for _, e := range a.status(t).Ejected {
		if e.Backend == backend {
			return e.Until
		}
	}
	return time.Time{}
}

// TestPrivilegedOutlierEjectsAKilledBackend: three backends, one of them
// killed (its port closed, so connects to it are refused) with no change
// to the Service. At most K = 3 connects fail; the kernel leaves it out
// within 100 ms of the third failure; then 1 000 connects have no
// failure. Back, it receives connects again after its 8 s ejection;
// killed again, it is ejected for twice as long.
func TestPrivilegedOutlierEjectsAKilledBackend(t *testing.T) {
	e := newAgentEnv(t, outlierYAML(3, ""))
	testagent.StartPod(t, e.ns, "pod-1", "198.18.0.1", 8080)
	victim := newKillablePod(t, e.ns, "pod-2", "198.18.0.2")
	testagent.StartPod(t, e.ns, "pod-3", "198.18.0.3", 8080)
	// An ejection of 8 s: the 1 000 connects after it must fit in it.
	// Under qemu's emulation (the kernel matrix) a connect takes tens of
	// milliseconds: 300 connects, in an ejection of 30 s.
	base, connects := 8*time.Second, 1000
	if sandbox.Emulated() {
		base, connects = 30*time.Second, 300
	}
	a := e.startHTTPAgent(t, "--outlier-base-ejection="+base.String(), "--outlier-max-ejection=5m")
	a.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	if names, refused, _, err := tally(e.ns, 60, time.Second); err != nil || refused != 0 || len(names) != 3 {
		t.Fatalf("before the kill: %v, %d refused, %v; want all 3 answering", names, refused, err)
	}

	victim.kill(t)
	failures := 0
	var third time.Time
	for i := 0; failures < 3; i++ {
		if i == 3000 {
			t.Fatalf("%d failures in 3000 connects after the kill, want 3", failures)
		}
		if _, err := askWithin(e.ns, outlierVIP, time.Second); err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect: %v, want a refusal by the killed backend", err)
			}
			if failures++; failures == 3 {
				third = time.Now()
			}
		}
	}
	// How long after the third failure the kernel's slots lack it.
	for {
		if bes := slotBackends(t, e.bpffs, webFE); len(bes) == 2 {
			break
		}
		if time.Since(third) > 5*time.Second {
			t.Fatalf("the kernel still lists the killed backend 5 s after its third failure:\n%s", a.Logs())
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(third)
	names, refused, timedOut, err := tally(e.ns, connects, time.Second)
	t.Logf("ejected %v after the 3rd failure (as seen from polling the maps); then %d connects: %v, %d refused, %d timed out",
		took.Round(100*time.Microsecond), connects, names, refused, timedOut)
	// The bound is 100 ms; under qemu's TCG emulation (the
	// kernel matrix), where everything runs tens of times slower, 1 s.
	bound := 100 * time.Millisecond
	if sandbox.Emulated() {
		bound = time.Second
	}
	if took > bound {
		t.Errorf("ejected %v after the third failure, want within %v", took, bound)
	}
	if err != nil || refused+timedOut != 0 || names["pod-2"] != 0 {
		t.Errorf("after the ejection: %v, %d refused, %d timed out, %v; want no failure", names, refused, timedOut, err)
	}
	until := a.ejectedUntil(t, "198.18.0.2:8080")
	if d := time.Until(until); d <= 0 || d > base {
		t.Errorf("first ejection ends in %v, want within the %v base", d, base)
	}
	checkWhyEjected(t, e, a, until)

	// Back: connects reach it again once the ejection ends.
	victim.start(t)
	for {
		if name, err := askWithin(e.ns, outlierVIP, time.Second); err == nil && name == "pod-2" {
			break
		}
		if time.Now().After(until.Add(3 * time.Second)) {
			t.Fatalf("pod-2 got no connect 3 s after its ejection ended:\n%s", a.Logs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if early := time.Until(until); early > 50*time.Millisecond {
		t.Errorf("pod-2 got a connect %v before its ejection ended", early)
	}

	// Killed again: ejected for 2 × base.
	victim.kill(t)
	failures = 0
	deadline := time.Now().Add(30 * time.Second)
	for failures < 3 && time.Now().Before(deadline) {
		if _, err := askWithin(e.ns, outlierVIP, time.Second); err != nil {
			failures++
		}
	}
	var second time.Time
	a.waitStatus(t, "the second ejection", func(s agentStatusJSON) bool {
		second = time.Now()
		for _, e := range s.Ejected {
			if e.Backend == "198.18.0.2:8080" && e.Ejections == 2 {
				until = e.Until
				return true
			}
		}
		return false
	})
	if d := until.Sub(second); d < 2*base-time.Second || d > 2*base {
		t.Errorf("second ejection lasts %v from when /status showed it, want about %v", d, 2*base)
	}
	if n := a.metric(t, `socklb_outlier_ejections_total{backend="198.18.0.2:8080",namespace="test",service="web"}`); n != 2 {
		t.Errorf("socklb_outlier_ejections_total = %v, want 2", n)
	}
	if n := a.metric(t, `socklb_backend_failed_connects_total{backend="198.18.0.2:8080"}`); n < 6 {
		t.Errorf("socklb_backend_failed_connects_total = %v, want at least the 6 refused connects", n)
	}
	if n := a.metric(t, `socklb_outlier_ejected_backends{namespace="test",service="web"}`); n != 1 {
		t.Errorf("socklb_outlier_ejected_backends = %v, want 1", n)
	}
	if n := a.metric(t, `socklb_backend_established_connects_total{backend="198.18.0.1:8080"}`); n < 100 {
		t.Errorf("socklb_backend_established_connects_total of pod-1 = %v, want its share of the connects", n)
	}
	if n := a.metric(t, `socklb_backend_open_connections{backend="198.18.0.1:8080"}`); n != 0 {
		t.Errorf("socklb_backend_open_connections of pod-1 = %v, want 0 with no connection open", n)
	}
}

// TestPrivilegedOutlierEjectsABlackholedBackend: a backend that drops
// SYNs (a listener whose accept queue is full) and clients that give up
// after 1 s: after K = 3 timeouts it is ejected, then no connect times out.
func TestPrivilegedOutlierEjectsABlackholedBackend(t *testing.T) {
	e := newAgentEnv(t, outlierYAML(3, ""))
	testagent.StartPod(t, e.ns, "pod-1", "198.18.0.1", 8080)
	testagent.StartPod(t, e.ns, "pod-3", "198.18.0.3", 8080)
	blackhole(t, e.ns, netip.MustParseAddrPort("198.18.0.2:8080"))
	a := e.startHTTPAgent(t, outlierFlags...)
	a.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	timeouts := 0
	for i := 0; timeouts < 3 && i < 200; i++ {
		if _, err := askWithin(e.ns, outlierVIP, time.Second); err != nil {
			if !isTimeout(err) {
				t.Fatalf("connect: %v, want a timeout", err)
			}
			timeouts++
		}
	}
	if timeouts != 3 {
		t.Fatalf("%d timeouts in 200 connects, want 3", timeouts)
	}
	a.waitStatus(t, "the blackholed backend ejected", func(s agentStatusJSON) bool {
		return len(s.Ejected) == 1 && s.Ejected[0].Backend == "198.18.0.2:8080"
	})
	names, refused, timedOut, err := tally(e.ns, 300, time.Second)
	t.Logf("after 3 timeouts: 300 connects: %v, %d refused, %d timed out", names, refused, timedOut)
	if err != nil || refused+timedOut != 0 {
		t.Errorf("after the ejection: %d refused, %d timed out, %v; want none", refused, timedOut, err)
	}
}

// blackhole makes addr a backend that never answers a SYN: a listener
// with a backlog of 0 whose queue one direct connection fills.
func blackhole(t *testing.T, ns *sandbox.Netns, addr netip.AddrPort) {
	t.Helper()
	if err := ns.AddAddr(netip.PrefixFrom(addr.Addr(), 32)); err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	fd := -1
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
			return err
		}
		return unix.Listen(fd, 0)
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
	filler, err := ns.Dial(t.Context(), "tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
}

// TestPrivilegedOutlierNeverRefusesAnOutage: with 2 of 3 backends dead
// the 50 % bound ejects one and keeps the other; with all 3 dead, none
// more is ejected and connects still go to the backends (refused by
// them, never by socklb: its no-backend counter stays 0). With the
// annotation off, a dead backend is never ejected.
func TestPrivilegedOutlierNeverRefusesAnOutage(t *testing.T) {
	e := newAgentEnv(t, outlierYAML(3, ""))
	pods := []*killablePod{
		newKillablePod(t, e.ns, "pod-1", "198.18.0.1"),
		newKillablePod(t, e.ns, "pod-2", "198.18.0.2"),
		newKillablePod(t, e.ns, "pod-3", "198.18.0.3"),
	}
	a := e.startHTTPAgent(t, outlierFlags...)
	a.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	pods[0].kill(t)
	pods[1].kill(t)
	names, refused, _, err := tally(e.ns, 200, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := a.waitStatus(t, "one of the two dead ejected", func(s agentStatusJSON) bool { return len(s.Ejected) == 1 })
	bes := slotBackends(t, e.bpffs, webFE)
	t.Logf("2 of 3 dead: 200 connects: %v, %d refused; ejected %+v; the kernel lists %v", names, refused, s.Ejected, bes)
	if len(bes) != 2 {
		t.Errorf("the kernel lists %v, want 2 backends (one dead one kept: 50 %% of 3 is 1)", bes)
	}
	// The kept dead one still gets connects: the bound is not the
	// datapath's to break.
	_, refused, _, err = tally(e.ns, 200, time.Second)
	if err != nil || refused == 0 {
		t.Errorf("200 more connects: %d refused, %v; want some refused by the kept dead backend", refused, err)
	}

	pods[2].kill(t)
	names, refused, _, err = tally(e.ns, 200, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 || refused != 200 {
		t.Errorf("all dead: %v answered, %d refused; want every connect refused by a backend", names, refused)
	}
	if n := a.metric(t, `socklb_service_no_backend_refusals_total{namespace="test",port="",service="web"}`); n != 0 {
		t.Errorf("socklb refused %v connects itself, want 0", n)
	}
	if bes := slotBackends(t, e.bpffs, webFE); len(bes) != 2 {
		t.Errorf("all dead: the kernel lists %v, want still 2 (at most 1 of 3 ejected)", bes)
	}

	// Annotation off: nothing ejected, whatever fails.
	pods[0].start(t)
	pods[1].start(t)
	pods[2].start(t)
	e.writeServicesSynced(t, a.Agent, outlierYAML(3, `socklb.io/outlier-detection: "false"`))
	a.waitStatus(t, "nothing ejected with the annotation off", func(s agentStatusJSON) bool { return len(s.Ejected) == 0 })
	await(t, "all 3 in the kernel", func() bool { return len(slotBackends(t, e.bpffs, webFE)) == 3 })
	pods[1].kill(t)
	_, refused, _, err = tally(e.ns, 300, time.Second)
	t.Logf("annotation off, pod-2 dead: 300 connects, %d refused", refused)
	if err != nil || refused < 50 {
		t.Errorf("annotation off: %d of 300 refused, %v; want about a third (no ejection)", refused, err)
	}
	if s := a.status(t); len(s.Ejected) != 0 {
		t.Errorf("annotation off: ejected %+v", s.Ejected)
	}
}

// TestPrivilegedOutlierEjectionOutlivesTheAgent: the agent killed while a
// backend is ejected leaves the kernel as it was, so connects still avoid
// it; the next agent reads the ejection back from the pinned map and
// keeps it until it ends.
func TestPrivilegedOutlierEjectionOutlivesTheAgent(t *testing.T) {
	e := newAgentEnv(t, outlierYAML(3, ""))
	testagent.StartPod(t, e.ns, "pod-1", "198.18.0.1", 8080)
	victim := newKillablePod(t, e.ns, "pod-2", "198.18.0.2")
	testagent.StartPod(t, e.ns, "pod-3", "198.18.0.3", 8080)
	long := []string{"--outlier-base-ejection=20s", "--outlier-max-ejection=1m"}
	a := e.startHTTPAgent(t, long...)
	a.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	victim.kill(t)
	if _, _, _, err := tally(e.ns, 100, time.Second); err != nil {
		t.Fatal(err)
	}
	var until time.Time
	a.waitStatus(t, "pod-2 ejected", func(s agentStatusJSON) bool {
		for _, x := range s.Ejected {
			until = x.Until
		}
		return len(s.Ejected) == 1
	})
	a.Kill(syscall.SIGKILL)
	<-a.Done()
	names, refused, timedOut, err := tally(e.ns, 300, time.Second)
	t.Logf("agent killed: 300 connects: %v, %d refused, %d timed out", names, refused, timedOut)
	if err != nil || refused+timedOut != 0 {
		t.Errorf("with no agent: %d refused, %d timed out, %v; want none", refused, timedOut, err)
	}
	b := e.startHTTPAgent(t, long...)
	b.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	if got := b.ejectedUntil(t, "198.18.0.2:8080"); !got.Equal(until) {
		t.Errorf("the new agent ejects pod-2 until %v, want the old agent's %v", got, until)
	}
	names, refused, timedOut, err = tally(e.ns, 300, time.Second)
	if err != nil || refused+timedOut != 0 {
		t.Errorf("after the restart: %v, %d refused, %d timed out, %v; want none", names, refused, timedOut, err)
	}
}

// checkWhyEjected: `inspect why` leaves the killed backend out as ejected,
// with its ejection's end and, in words, the time left, and the kernel
// agreeing with the plan.
func checkWhyEjected(t *testing.T, e *agentEnv, a *httpAgent, until time.Time) {
	t.Helper()
	r := e.askWhy(t, a, outlierVIP+"/tcp")
	if len(r.Frontends) != 1 {
		t.Fatalf("inspect why %s: %+v, want one frontend", outlierVIP, r)
	}
	f := r.Frontends[0]
	i := slices.IndexFunc(f.Endpoints, func(ep why.Endpoint) bool { return ep.Address == "198.18.0.2:8080" })
	if i < 0 {
		t.Fatalf("inspect why %s: no endpoint 198.18.0.2:8080 in %+v", outlierVIP, f.Endpoints)
	}
	ep := f.Endpoints[i]
	if ep.Used || ep.Reason != lb.ReasonEjected.String() || ep.EjectedUntil == nil || ep.Ejections != 1 ||
		ep.EjectedUntil.Sub(until).Abs() > time.Second {
		t.Errorf("inspect why: the killed backend %+v; want out, %q, ejection 1 until %v", ep, lb.ReasonEjected, until)
	}
	if len(f.Planned) != 2 || f.Kernel == nil || len(f.Kernel.Backends) != 2 || f.Differs != "" {
		t.Errorf("inspect why: planned %v, kernel %+v, differs %q; want the 2 others in both", f.Planned, f.Kernel, f.Differs)
	}
	out, err := e.agentCmd("inspect", "why", outlierVIP+"/tcp", "--health-addr="+a.health).CombinedOutput()
	t.Logf("inspect why %s/tcp with a backend ejected:\n%s", outlierVIP, out)
	if err != nil || !regexp.MustCompile(`198\.18\.0\.2:8080 .* out +ejected by outlier detection \(ejection 1, [0-9.]+m?s left\)`).Match(out) {
		t.Errorf("inspect why in words: %v; want the ejection with its time left:\n%s", err, out)
	}
}

package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/reconciler"
)

// datapath is the kernel side of one test: programs attached to a child
// cgroup that this test process has joined, maps pinned on a private bpffs,
// and a network namespace for clients and backends.
type datapath struct {
	dp    *loader.Datapath
	ns    *sandbox.Netns
	cg    *sandbox.Cgroup
	bpffs string
	maps  maps.Maps
	rec   *reconciler.Reconciler
}

func newDatapath(t *testing.T) *datapath {
	t.Helper()
	sandbox.RequirePrivileges(t)
	d := &datapath{ns: sandbox.NewNetns(t), cg: sandbox.NewCgroup(t)}
	d.bpffs = filepath.Join(sandbox.MountBPFFS(t), "socklb")
	dp, err := loader.Load(loader.Options{BPFFSPath: d.bpffs, CgroupPath: d.cg.Path()})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() {
		if err := errors.Join(dp.Close(), loader.Cleanup(d.bpffs, nil)); err != nil {
			t.Error(err)
		}
	})
	// Sockets join the cgroup of the process that creates them.
	restore, err := d.cg.EnterSelf()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restore(); err != nil {
			t.Error(err)
		}
	})
	d.dp = dp
	d.maps = maps.New(&dp.Maps)
	d.rec = reconciler.New(d.maps, nil)
	return d
}

// awaitBound bounds every wait of these tests for an event or a number
// of completed connects. A working system gets there in well under a
// second, a slow or busy machine in a few; only a failing test waits this
// long, so it is no measure of speed.
const awaitBound = 2 * time.Minute

// await polls cond until it holds; if it still does not after awaitBound,
// the test fails naming what it waited for.
func await(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(awaitBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", awaitBound, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *datapath) pod(t *testing.T, name, addr string, port uint16) {
	t.Helper()
	testagent.StartPod(t, d.ns, name, addr, port)
}

func (d *datapath) apply(t *testing.T, s ...lb.Service) {
	t.Helper()
	if _, err := d.rec.Apply(lb.State{Services: s}); err != nil {
		t.Fatal(err)
	}
}

func service(vip string, port uint16, proto lb.Proto, backends ...string) lb.Service {
	s := lb.Service{
		Frontend: lb.Frontend{Addr: netip.MustParseAddr(vip), Port: port, Proto: proto},
		Name:     types.NamespacedName{Namespace: "test", Name: fmt.Sprintf("svc-%d", port)},
	}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		s.Backends = append(s.Backends, lb.Backend{Addr: ap.Addr(), Port: ap.Port()})
	}
	return s
}

func (d *datapath) ask(network, addr string) (string, error) {
	return testagent.Ask(d.ns, network, addr)
}

const (
	vip   = "198.19.0.10"
	other = "198.19.0.99"
)

func TestPrivilegedTCPConnectsSpreadOverBackends(t *testing.T) {
	d := newDatapath(t)
	for i := 1; i <= 3; i++ {
		d.pod(t, fmt.Sprintf("pod-%d", i), fmt.Sprintf("198.18.0.%d", i), 8080)
	}
	d.apply(t, service(vip, 80, lb.TCP, "198.18.0.1:8080", "198.18.0.2:8080", "198.18.0.3:8080"))

	const connects = 300
	got := map[string]int{}
	for range connects {
		name, err := d.ask("tcp4", vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	t.Logf("300 TCP connects to %s:80: %v", vip, got)
	for i := 1; i <= 3; i++ {
		n := got[fmt.Sprintf("pod-%d", i)]
		if share := float64(n) / connects; share < 0.20 || share > 0.47 {
			t.Errorf("pod-%d got %d of %d connects (%.0f%%), want 20%%..47%%", i, n, connects, share*100)
		}
	}
	if len(got) != 3 {
		t.Errorf("answers came from %v, want exactly the 3 pods", got)
	}
	c, err := d.maps.Counters(1)
	if err != nil || c.Connects != connects {
		t.Errorf("connect counter = %d (%v), want %d", c.Connects, err, connects)
	}
}

func TestPrivilegedConnectedUDPReachesBackends(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "dns-1", "198.18.0.1", 5353)
	d.pod(t, "dns-2", "198.18.0.2", 5353)
	d.apply(t, service(vip, 53, lb.UDP, "198.18.0.1:5353", "198.18.0.2:5353"))

	got := map[string]int{}
	for range 100 {
		name, err := d.ask("udp4", vip+":53")
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	t.Logf("100 connected UDP exchanges with %s:53: %v", vip, got)
	if got["dns-1"] == 0 || got["dns-2"] == 0 || len(got) != 2 {
		t.Errorf("answers came from %v, want both dns pods", got)
	}
}

func TestPrivilegedEmptyServiceRefuses(t *testing.T) {
	d := newDatapath(t)
	d.apply(t, service(vip, 80, lb.TCP), service(vip, 53, lb.UDP))
	for _, network := range []string{"tcp4", "udp4"} {
		port := map[string]string{"tcp4": "80", "udp4": "53"}[network]
		_, err := d.ask(network, vip+":"+port)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s connect to an empty service: %v, want ECONNREFUSED", network, err)
		}
		// Immediate: connect(2) itself is refused, not a read after it.
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "dial" {
			t.Errorf("%s connect to an empty service: %v; want connect(2) itself refused", network, err)
		}
	}
	c, _ := d.maps.Counters(1)
	c2, _ := d.maps.Counters(2)
	if c.Refused+c2.Refused != 2 {
		t.Errorf("refused counters = %d+%d, want 2", c.Refused, c2.Refused)
	}
}

func TestPrivilegedOtherAddressesAreUntouched(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "pod-1", "198.18.0.1", 8080)
	d.apply(t, service(vip, 80, lb.TCP, "198.18.0.1:8080"))

	// A backend address itself, reached directly.
	if name, err := d.ask("tcp4", "198.18.0.1:8080"); err != nil || name != "pod-1" {
		t.Errorf("direct connect: %q, %v", name, err)
	}
	// Another address is not a service: connect goes to the address as
	// given, for which the namespace has no route.
	if _, err := d.ask("tcp4", other+":80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("tcp4 %s:80: %v, want ENETUNREACH (not rewritten)", other, err)
	}
	// The cluster IP at another port or protocol is not rewritten either,
	// but refused at once, as kube-proxy's nftables mode does.
	for _, tc := range []struct{ network, addr string }{
		{"tcp4", vip + ":81"},
		{"udp4", vip + ":80"},
	} {
		if _, err := d.ask(tc.network, tc.addr); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s %s: %v, want ECONNREFUSED (a port the cluster IP's Service does not have)", tc.network, tc.addr, err)
		}
	}
}

// TestPrivilegedBackendSwapUnderLoad replaces a service's backend set again
// and again while clients connect as fast as they can: no connect may fail,
// and none that starts after an update returned may reach a backend that
// the update removed.
func TestPrivilegedBackendSwapUnderLoad(t *testing.T) {
	swapUnderLoad(t, newDatapath(t), vip, "198.18.0.%d")
}

// swapUnderLoad runs the swap test against the frontend vip:80 with five
// pods at fmt.Sprintf(podFormat, 1..5).
func swapUnderLoad(t *testing.T, d *datapath, vip, podFormat string) {
	t.Helper()
	var pods []string
	names := map[string]string{}
	for i := 1; i <= 5; i++ {
		addr := fmt.Sprintf(podFormat, i)
		d.pod(t, "pod-"+addr, addr, 8080)
		ap := netip.AddrPortFrom(netip.MustParseAddr(addr), 8080).String()
		pods = append(pods, ap)
		names[ap] = "pod-" + addr
	}
	sets := [][]string{
		{pods[0], pods[1]},
		{pods[2]},
		{pods[3], pods[4], pods[0]},
	}
	network := "tcp4"
	if netip.MustParseAddr(vip).Is6() {
		network = "tcp6"
	}
	target := netip.AddrPortFrom(netip.MustParseAddr(vip), 80).String()
	d.apply(t, service(vip, 80, lb.TCP, sets[0]...))

	type result struct {
		start, end time.Time // the connect happened in between
		name       string
		err        error
	}
	var (
		mu      sync.Mutex
		results []result
	)
	connects := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(results)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				name, err := d.ask(network, target)
				end := time.Now()
				mu.Lock()
				results = append(results, result{start, end, name, err})
				mu.Unlock()
			}
		}()
	}

	type update struct {
		done    time.Time
		allowed map[string]bool
	}
	allowedNames := func(set []string) map[string]bool {
		allowed := map[string]bool{}
		for _, b := range set {
			allowed[names[b]] = true
		}
		return allowed
	}
	// The first "update" is the set applied before the load started.
	updates := []update{{time.Time{}, allowedNames(sets[0])}}
	// Before each swap, and after the last, perSwap more connects
	// complete: with two clients, each with at most one connect in
	// flight, at least perSwap-2 of them started after the update
	// before returned. However slow the machine, every update is
	// exercised, and the test needs no load floor.
	const swaps, perSwap = 30, 10
	for round := range swaps + 1 {
		n := connects()
		await(t, fmt.Sprintf("%d connects after update %d", perSwap, round), func() bool { return connects() >= n+perSwap })
		if round == swaps {
			break
		}
		set := sets[(round+1)%len(sets)]
		d.apply(t, service(vip, 80, lb.TCP, set...))
		updates = append(updates, update{time.Now(), allowedNames(set)})
	}
	cancel()
	wg.Wait()

	failed, stale := 0, 0
	for _, r := range results {
		if r.err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("connect failed: %v", r.err)
			}
			continue
		}
		// The connect may reach the backends of every update that was
		// live at some moment between its start and end. Update j is
		// published after update j-1 returned and before it returns
		// itself, and is live until update j+1 is published; so it
		// cannot have been live if j-1 returned after the end or j+1
		// before the start. (For a connect that takes no time these
		// are the last update that returned before it and the next.)
		reachable := false
		for j := range updates {
			if j > 0 && updates[j-1].done.After(r.end) {
				break
			}
			if j+1 < len(updates) && updates[j+1].done.Before(r.start) {
				continue
			}
			reachable = reachable || updates[j].allowed[r.name]
		}
		if !reachable {
			stale++
			if stale <= 5 {
				t.Errorf("connect in [%s, %s] after the load began reached %s, which no update live then had",
					r.start.Sub(results[0].start), r.end.Sub(results[0].start), r.name)
			}
		}
	}
	t.Logf("%d connects during %d backend-set swaps: %d failed, %d reached a removed backend",
		len(results), len(updates)-1, failed, stale)
}

func TestPrivilegedBpftoolShowsFieldNames(t *testing.T) {
	d := newDatapath(t)
	d.apply(t, service(vip, 80, lb.TCP, "198.18.0.1:8080"))
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		t.Fatal("bpftool is needed (apt-get install bpftool)")
	}
	for mapName, fields := range map[string][]string{
		"socklb_svc_v3":  {`"addr"`, `"port"`, `"proto"`, `"slot"`, `"backend_id"`, `"count"`, `"base"`, `"rev_nat_id"`, `"backend"`},
		"socklb_be_v3":   {`"addr"`, `"port"`, `"proto"`},
		"socklb_cnt_v3":  {`"connects"`, `"refused"`},
		"socklb_name_v3": {`"name"`, `"test/svc-80"`},
	} {
		out, err := exec.Command(bpftool, "map", "dump", "pinned", filepath.Join(d.bpffs, mapName)).CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v\n%s", mapName, err, out)
		}
		for _, f := range fields {
			if !strings.Contains(string(out), f) {
				t.Errorf("bpftool dump of %s lacks %s:\n%s", mapName, f, out)
			}
		}
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/tests/bench/kubeproxy"
	"github.com/socklb/socklb/tests/e2e/cluster"
)

const (
	benchNS   = "bench"
	nodeName  = "bench-node"
	bulkPort  = 9000
	markerPod = "198.18.0.100"
	// Service i targets port firstPodPort + i%podPorts on every pod. With
	// one shared port, kube-proxy's conntrack sees reply-tuple clashes
	// between Services (a client port reused towards another VIP that NATs
	// to the same backend) and drops SYNs, which real clusters, whose
	// Services rarely share backends, mostly do not.
	firstPodPort = 20000
	podPorts     = 100
	changeGap    = 150 * time.Millisecond
	// changeBudget bounds one peer's change phase.
	changeBudget = 5 * time.Minute
	// loadWriters create the Services in parallel.
	loadWriters = 64
)

// Results is everything one run measured.
type Results struct {
	Date    string `json:"date"`
	Machine string `json:"machine"`
	Kernel  string `json:"kernel"`
	Command string `json:"command"`
	Took    string `json:"took"`
	// ChangesAsked is how many changes each peer's change phase makes.
	ChangesAsked int      `json:"changesAsked"`
	Rows         []Row    `json:"rows"`
	Notes        []string `json:"notes"`
}

// Row is one peer at one number of services. Zero means not measured.
type Row struct {
	Services    int     `json:"services"`
	Peer        string  `json:"peer"`
	ConnPerSec  float64 `json:"connPerSec"`
	P50us       float64 `json:"p50us"`
	P99us       float64 `json:"p99us"`
	Failed      int     `json:"failedConnects"`
	BulkMBps    float64 `json:"bulkMBps"`
	ColdStartMs float64 `json:"coldStartMs,omitempty"`
	AgentSyncMs float64 `json:"agentSyncMs,omitempty"`
	ChangeP50Ms float64 `json:"changeP50ms,omitempty"`
	ChangeP99Ms float64 `json:"changeP99ms,omitempty"`
	// Changes is how many changes the percentiles are of: fewer than
	// asked for when a slow peer ran out of the phase's time budget.
	Changes         int     `json:"changes,omitempty"`
	RSSMiB          float64 `json:"rssMiB,omitempty"`
	BPFNsPerConnect float64 `json:"bpfNsPerConnect,omitempty"`
	// The churn phase, at one size: the churn's updates per second
	// reached, the CPU seconds the peer used, the updates the API server
	// refused, and the prober's updates and the change latency they
	// measured meanwhile.
	ChurnUpdatesPerSec float64 `json:"churnUpdatesPerSec,omitempty"`
	ChurnCPUSec        float64 `json:"churnCPUSec,omitempty"`
	ChurnFailed        int     `json:"churnFailedUpdates,omitempty"`
	ChurnProbes        int     `json:"churnProbes,omitempty"`
	ChurnSeconds       float64 `json:"churnSeconds,omitempty"`
	ChurnChangeP50Ms   float64 `json:"churnChangeP50ms,omitempty"`
	ChurnChangeP99Ms   float64 `json:"churnChangeP99ms,omitempty"`
	// IdleCPUPercent is the share of one core used over IdleSeconds
	// with nothing changing.
	IdleCPUPercent float64 `json:"idleCPUPercent,omitempty"`
	IdleSeconds    float64 `json:"idleSeconds,omitempty"`
	Error          string  `json:"error,omitempty"`
}

// world is the run's cluster, backends and Services.
type world struct {
	tb     *programTB
	c      *cluster.Cluster
	client kubernetes.Interface
	cfg    config
	log    *slog.Logger
	pods   []string // backend addresses
	vips   []string // "ip:80" of svc-0..n-1
	slices []*discoveryv1.EndpointSlice
	bulk   string // "ip:9000" of the bulk Service
}

func measure(ctx context.Context, tb *programTB, c config, log *slog.Logger) (*Results, error) {
	if err := sandbox.CheckPrivileges(); err != nil {
		return nil, fmt.Errorf("the benchmark needs root: %w", err)
	}
	before, err := kubeproxy.SnapshotHostFirewall()
	if err != nil {
		return nil, err
	}
	res := &Results{
		Date:    time.Now().UTC().Format("2006-01-02"),
		Machine: machine(),
		Kernel:  kernel(),
		Command: c.command,

		ChangesAsked: c.changes,
	}
	w := &world{tb: tb, cfg: c, log: log}
	log.Info("starting etcd and kube-apiserver in a private network namespace")
	// 114 682 ClusterIPs for the largest run, none overlapping the pods'
	// 198.18.0.0/18; no controller manager: the slices are hand-made.
	w.c = cluster.StartWith(tb, cluster.Options{
		ServiceCIDR:              "198.19.0.0/16",
		ExtraServiceCIDRs:        []string{"198.18.128.0/17", "198.18.64.0/18"},
		WithoutControllerManager: true,
		ClientQPS:                5000,
		ClientBurst:              10000,
	})
	cfg := rest.CopyConfig(w.c.RESTConfig)
	// No client-side rate limit: the loader's writers and the churn go
	// as fast as the API server takes them.
	cfg.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	if w.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	w.c.CreateNode(tb, nodeName, "")
	w.c.CreateNamespace(tb, benchNS)
	w.startBackends()

	all := append(slices.Clone(c.sizes), c.socklbOnly...)
	for _, n := range all {
		log.Info("loading services", "services", n, "endpoints_each", c.endpoints)
		start, from := time.Now(), len(w.vips)
		if err := w.ensureServices(ctx, n); err != nil {
			return nil, err
		}
		took := time.Since(start)
		if created := n - from; created > 0 {
			rate := float64(2*created) / took.Seconds()
			log.Info("services loaded", "services", n, "took", took.Round(time.Millisecond), "objects_per_s", int(rate))
			res.Notes = append(res.Notes, fmt.Sprintf("loading %d Services and their EndpointSlices (%d → %d) took %s: %.0f objects/s (%d writers, no client-side rate limit)",
				created, from, n, took.Round(time.Second), rate, loadWriters))
		}
		peers := c.peers
		if slices.Contains(c.socklbOnly, n) {
			peers = slices.DeleteFunc(slices.Clone(peers), func(p string) bool { return strings.HasPrefix(p, "kube-proxy-") })
		}
		for _, p := range peers {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Info("measuring", "services", n, "peer", p)
			row := w.measurePeer(ctx, p, n)
			log.Info("measured", "row", fmt.Sprintf("%+v", row))
			res.Rows = append(res.Rows, row)
		}
	}

	after, err := kubeproxy.SnapshotHostFirewall()
	if err != nil {
		return nil, err
	}
	if ok, diff := before.Equal(after); !ok {
		return nil, fmt.Errorf("the host's firewall changed during the run: %s", diff)
	}
	res.Notes = append(res.Notes, "host iptables, ip6tables and nftables rulesets were identical before and after the run")
	return res, nil
}

// startBackends runs the pods: name servers on the namespace's loopback,
// a marker pod for change latency, and a sink for bulk throughput.
func (w *world) startBackends() {
	for i := 1; i <= w.cfg.endpoints; i++ {
		addr := fmt.Sprintf("198.18.0.%d", i)
		for p := range podPorts {
			testagent.StartPod(w.tb, w.c.NS, fmt.Sprintf("pod-%d", i), addr, uint16(firstPodPort+p))
		}
		w.pods = append(w.pods, addr)
	}
	for p := range podPorts {
		testagent.StartPod(w.tb, w.c.NS, "marker", markerPod, uint16(firstPodPort+p))
	}
	l, err := w.c.NS.Listen("tcp4", fmt.Sprintf("198.18.0.1:%d", bulkPort))
	if err != nil {
		w.tb.Fatalf("bulk sink: %v", err)
	}
	w.tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "%d\n", n)
			}()
		}
	}()
}

// ensureServices creates Services svc-<i> with ClusterIPs and a hand-made
// EndpointSlice each (every pod as an endpoint) until there are n.
func (w *world) ensureServices(ctx context.Context, n int) error {
	if w.bulk == "" {
		svc, _, err := w.createService(ctx, "bulk", clusterIP(0), []string{"198.18.0.1"}, bulkPort)
		if err != nil {
			return err
		}
		w.bulk = netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80).String()
	}
	from := len(w.vips)
	if n <= from {
		return nil
	}
	w.vips = append(w.vips, make([]string, n-from)...)
	w.slices = append(w.slices, make([]*discoveryv1.EndpointSlice, n-from)...)
	jobs := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range loadWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				svc, sl, err := w.createService(ctx, fmt.Sprintf("svc-%06d", i), clusterIP(i+1), w.pods, int32(firstPodPort+i%podPorts))
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				w.vips[i] = netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80).String()
				w.slices[i] = sl
			}
		}()
	}
	for i := from; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// serviceRanges are the run's Service CIDRs (see measure), each without
// its network and broadcast address and the first one without .1 (the
// kubernetes Service's).
var serviceRanges = []struct {
	first netip.Addr
	size  int
}{
	{netip.MustParseAddr("198.19.0.2"), 1<<16 - 3},
	{netip.MustParseAddr("198.18.128.1"), 1<<15 - 2},
	{netip.MustParseAddr("198.18.64.1"), 1<<14 - 2},
}

// clusterIP is the i-th address of serviceRanges. The loader names each
// Service's ClusterIP instead of letting the API server pick one: picking
// slows down as a range fills (at 40 000 Services the API server created
// 30 objects a second, one core busy).
func clusterIP(i int) string {
	for _, r := range serviceRanges {
		if i < r.size {
			a := r.first.As4()
			v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(i)
			return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
		}
		i -= r.size
	}
	return "" // beyond the ranges: the API server picks (and fails once all are used)
}

func (w *world) createService(ctx context.Context, name, ip string, pods []string, port int32) (*corev1.Service, *discoveryv1.EndpointSlice, error) {
	svc, err := w.client.CoreV1().Services(benchNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create service %s: %w", name, err)
	}
	sl, err := w.client.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, slice(name, pods, port), metav1.CreateOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("create endpointslice of %s: %w", name, err)
	}
	return svc, sl, nil
}

func slice(svc string, pods []string, port int32) *discoveryv1.EndpointSlice {
	name, proto := "http", corev1.ProtocolTCP
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: benchNS, Name: svc + "-manual",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "socklb-bench"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	ready := true
	for _, p := range pods {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName: ptr(nodeName),
		})
	}
	return sl
}

func ptr[T any](v T) *T { return &v }

// measurePeer runs every measurement of one peer at n services.
func (w *world) measurePeer(ctx context.Context, peer string, n int) (row Row) {
	row = Row{Services: n, Peer: peer}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(errFatal)
			if !ok {
				panic(r)
			}
			row.Error = f.msg
			w.log.Error("peer failed", "peer", peer, "services", n, "error", f.msg)
		}
	}()
	targets, bulk := w.vips[:n], w.bulk
	switch peer {
	case "direct":
		targets, bulk = nil, fmt.Sprintf("198.18.0.1:%d", bulkPort)
		for _, p := range w.pods {
			for port := range podPorts {
				targets = append(targets, fmt.Sprintf("%s:%d", p, firstPodPort+port))
			}
		}
		w.dataPath(&row, targets, bulk)
		return row
	case "socklb":
		w.socklb(ctx, &row, targets, bulk)
	default:
		w.kubeProxy(ctx, &row, kubeproxy.Mode(strings.TrimPrefix(peer, "kube-proxy-")), targets, bulk)
	}
	return row
}

func (w *world) socklb(ctx context.Context, row *Row, targets []string, bulk string) {
	cg, rmCg, err := sandbox.CreateCgroup("socklb-bench-")
	if err != nil {
		w.tb.Fatalf("cgroup: %v", err)
	}
	defer rmCg()
	fs, rmFS, err := sandbox.CreateBPFFS("socklb-bench-bpffs-")
	if err != nil {
		w.tb.Fatalf("bpffs: %v", err)
	}
	defer rmFS()
	pins := filepath.Join(fs, "socklb")
	args := []string{"--bpffs-path=" + pins, "--cgroup-path=" + cg.Path()}
	runArgs := []string{"--service-map-entries=" + strconv.Itoa(serviceMapEntries(len(targets), w.cfg.endpoints))}
	if w.cfg.profileDir != "" {
		runArgs = append(runArgs, "--pprof-addr=127.0.0.1:0")
	}
	defer func() {
		if out, err := exec.Command(w.cfg.agentBin, append([]string{"cleanup"}, args...)...).CombinedOutput(); err != nil {
			w.log.Error("agent cleanup", "error", err, "output", string(out))
		}
	}()
	// Clients must be in the cgroup before they open sockets.
	restore, err := cg.EnterSelf()
	if err != nil {
		w.tb.Fatalf("enter cgroup: %v", err)
	}
	defer restore()

	start := time.Now()
	agent := testagent.Start(w.tb, exec.Command(w.cfg.agentBin, slices.Concat([]string{"run", "--source=kubernetes",
		"--kubeconfig=" + w.c.Kubeconfig, "--node-name=" + nodeName, "--health-addr="}, runArgs, args)...), w.c.NS)
	defer agent.Kill(syscall.SIGTERM)
	w.waitServing(targets, 3*time.Minute)
	row.ColdStartMs = ms(time.Since(start))
	agent.WaitLog(w.tb, "maps synced", time.Minute)
	row.AgentSyncMs = agentSyncMs(agent.Logs())

	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		w.tb.Fatalf("enable BPF run-time stats: %v", err)
	}
	prog := pinnedProgram(w.tb, pins, "link_sock4_connect")
	before, _ := prog.Stats()
	w.dataPath(row, targets, bulk)
	after, _ := prog.Stats()
	stats.Close()
	prog.Close()
	if before != nil && after != nil && after.RunCount > before.RunCount {
		row.BPFNsPerConnect = float64(after.Runtime-before.Runtime) / float64(after.RunCount-before.RunCount)
	}
	w.changeLatency(ctx, row)
	row.RSSMiB = rssMiB(agent.Cmd.Process.Pid)
	pprof := ""
	if m := pprofLine.FindStringSubmatch(agent.Logs()); m != nil {
		pprof = m[1]
	}
	if w.cfg.churnAt == len(targets) {
		w.churn(ctx, row, agent.Cmd.Process.Pid, len(targets), pprof)
	}
	if w.cfg.idleFor > 0 && len(targets) == w.largest() {
		w.idle(ctx, row, agent.Cmd.Process.Pid, pprof)
	}
}

var pprofLine = regexp.MustCompile(`msg="pprof endpoint listening" addr=(\S+)`)

// serviceMapEntries sizes socklb's service map for n Services of k
// endpoints: an entry per frontend and per slot, with room to republish
// the largest frontend, at least the agent's default. The compiled default
// (524 288) holds some 47 000 such Services.
func serviceMapEntries(n, k int) int {
	return max(524288, (n+1)*(k+1)+4096)
}

// largest is the largest size of the run.
func (w *world) largest() int {
	return slices.Max(append(slices.Clone(w.cfg.sizes), w.cfg.socklbOnly...))
}

func (w *world) kubeProxy(ctx context.Context, row *Row, mode kubeproxy.Mode, targets []string, bulk string) {
	start := time.Now()
	p, stop, err := kubeproxy.StartConfig(ctx, w.c, kubeproxy.Config{
		Mode: mode, NodeName: nodeName, LogDir: w.tb.TempDir(), Backend: w.cfg.backend,
	})
	if err != nil {
		w.tb.Fatalf("start kube-proxy %s: %v", mode, err)
	}
	defer func() {
		if err := stop(); err != nil {
			w.log.Error("stop kube-proxy", "error", err)
		}
	}()
	// A peer that cannot program the Services within five minutes is
	// reported as such rather than waited for.
	w.waitServing(targets, 5*time.Minute)
	row.ColdStartMs = ms(time.Since(start))
	w.dataPath(row, targets, bulk)
	w.changeLatency(ctx, row)
	if rss, err := p.RSS(); err == nil {
		row.RSSMiB = float64(rss) / (1 << 20)
	}
	if w.cfg.churnAt == len(targets) {
		w.churn(ctx, row, p.PID, len(targets), "")
	}
}

func pinnedProgram(tb *programTB, dir, linkPin string) *ebpf.Program {
	l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil)
	if err != nil {
		tb.Fatalf("open %s: %v", linkPin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		tb.Fatalf("link info: %v", err)
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		tb.Fatalf("open program %d: %v", info.Program, err)
	}
	return p
}

var syncTook = regexp.MustCompile(`msg="maps synced" first=true took=(\S+)`)

// agentSyncMs is the agent's own time for its first full sync (model and
// map writes), from its log.
func agentSyncMs(logs string) float64 {
	m := syncTook.FindStringSubmatch(logs)
	if m == nil {
		return 0
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		return 0
	}
	return ms(d)
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func machine() string {
	cpus := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		model := ""
		for line := range strings.Lines(string(b)) {
			if strings.HasPrefix(line, "processor") {
				cpus++
			}
			if model == "" && strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
			}
		}
		var si unix.Sysinfo_t
		_ = unix.Sysinfo(&si)
		return fmt.Sprintf("%d × %s, %.0f GiB RAM", cpus, model, float64(si.Totalram)*float64(si.Unit)/(1<<30))
	}
	return "unknown"
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

//go:build nodee2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socklb/socklb/tests/node/harness"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPrivilegedNode brings up one node and runs the scenarios on it in
// order (each a subtest, numbered as in the README's "Try it on a real
// node"); then, after the node's teardown, checks that nothing of it is
// left (scenario 7).
func TestPrivilegedNode(t *testing.T) {
	repo := repoRoot(t)
	archive := agentArchive(t, repo)
	var fp *harness.Footprint
	t.Run("node", func(t *testing.T) {
		probeBin := buildProbe(t, repo)
		n := harness.Start(t, harness.Options{ClusterDNS: []string{clusterDNS}, Images: []string{archive}})
		fp = n.Footprint()
		e := &nodeEnv{n: n, fp: fp, repo: repo, probeBin: probeBin}
		e.agentImages(t)
		n.ImportBinaryImage(t, harness.ImageSpec{Binary: probeBin, Path: "/nodeprobe"}, probeImage)
		n.ImportBinaryImage(t, harness.ImageSpec{Binary: n.Binaries.CoreDNS, Path: "/coredns"}, corednsImage)

		for _, s := range []struct {
			name string
			run  func(*nodeEnv, *testing.T)
		}{
			{"0_no_clusterip_without_socklb", (*nodeEnv).withoutSocklb},
			{"1_daemonset_ready_privileged", func(e *nodeEnv, t *testing.T) { e.deployAgent(t, "privileged") }},
			{"dns_and_workloads", (*nodeEnv).deployWorkloads},
			{"2_balanced_by_dns_name", (*nodeEnv).balanced},
			{"3_dns_three_ways", (*nodeEnv).dnsThreeWays},
			{"4_rollout_restart", (*nodeEnv).rolloutRestart},
			{"5_agent_upgrade_and_delete", (*nodeEnv).agentUpgrade},
			{"6_nodeport_and_metrics", (*nodeEnv).nodePortMetrics},
			{"8_bypass", (*nodeEnv).bypassed},
			{"privileged_to_capabilities_in_place", (*nodeEnv).switchToCapabilities},
			{"removed_and_cleaned_up", (*nodeEnv).removeAgent},
			{"1_daemonset_ready_capabilities_fresh", func(e *nodeEnv, t *testing.T) { e.deployAgent(t, "capabilities") }},
			{"2_balanced_capabilities", (*nodeEnv).balanced},
			{"9_bypass_capabilities", (*nodeEnv).bypassCapabilities},
		} {
			if !t.Run(s.name, func(t *testing.T) { s.run(e, t) }) {
				t.Fatalf("scenario %s failed; the later ones depend on it", s.name)
			}
		}
	})
	if fp == nil {
		t.Fatal("the node did not come up")
	}
	t.Run("7_teardown_leaves_nothing", func(t *testing.T) {
		left := fp.Leftovers()
		for _, l := range left {
			t.Errorf("left after teardown: %s", l)
		}
		if len(left) == 0 {
			t.Logf("scenario 7: after teardown nothing of node %s is left: no process, mount, netns, changed sysctl, cgroup (%d hierarchies), BPF program (%d) or map (%d); containerd's state and the bpffs pins lived in the node's own tmpfs and bpffs mounts",
				fp.Name, len(fp.CgroupDirs), len(fp.BPFPrograms), len(fp.BPFMaps))
		}
	})
}

// agentImages finds the agent image's two tags in the node's containerd.
func (e *nodeEnv) agentImages(t *testing.T) {
	out := e.n.Run(t, e.n.Binaries.Ctr, "--address", e.n.ContainerdSocket, "--namespace", "k8s.io", "images", "ls", "-q")
	for name := range strings.Lines(out) {
		name = strings.TrimSpace(name)
		if !strings.Contains(name, "/socklb-agent:") {
			continue
		}
		if strings.HasSuffix(name, ":latest") {
			e.agentLatest = name
		} else if e.agentSecond == "" {
			e.agentSecond = name
		}
	}
	if e.agentLatest == "" || e.agentSecond == "" {
		t.Fatalf("the agent image lacks its two tags (latest and the version) in containerd:\n%s", out)
	}
	t.Logf("agent image tags: %s, %s", e.agentLatest, e.agentSecond)
}

// withoutSocklb is the control: the client pods run in demo and other,
// and before socklb is deployed a connect from one to the kubernetes
// Service's ClusterIP fails (nothing else on this node translates
// ClusterIPs), and nothing is attached to the node's cgroup root.
func (e *nodeEnv) withoutSocklb(t *testing.T) {
	c := e.n.Client
	for _, ns := range []string{demoNS, otherNS} {
		create(t, "namespace "+ns, func(ctx context.Context) (*corev1.Namespace, error) {
			return c.CoreV1().Namespaces().Create(ctx, namespace(ns), metav1.CreateOptions{})
		})
		create(t, "pod "+ns+"/client", func(ctx context.Context) (any, error) {
			return c.CoreV1().Pods(ns).Create(ctx, clientPod(ns), metav1.CreateOptions{})
		})
	}
	for _, ns := range []string{demoNS, otherNS} {
		e.waitPodReady(t, ns, "client")
	}
	e.noClusterIP(t, "before socklb")
}

// noClusterIP checks that nothing is attached to the node's cgroup root
// and that a connect from demo/client to the kubernetes Service's
// ClusterIP fails.
func (e *nodeEnv) noClusterIP(t *testing.T, when string) {
	if progs := bpftoolCgroup(t, e.n.Cgroup2Dir); len(progs) != 0 {
		t.Fatalf("%s: programs attached to the node's cgroup root: %+v", when, progs)
	}
	kube, err := e.n.Client.CoreV1().Services("default").Get(t.Context(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("%s:%d", kube.Spec.ClusterIP, kube.Spec.Ports[0].Port)
	var r connectResult
	e.mustProbe(t, demoNS, "client", &r, "connect", "--addr", addr, "--count", "3", "--timeout", "1s")
	t.Logf("control: %s, 3 connects from demo/client to default/kubernetes %s: %d failed %v", when, addr, r.Failed, r.Errors)
	if r.Failed != 3 {
		t.Errorf("%s: %d of 3 connects to %s succeeded: the test would not see socklb's work", when, 3-r.Failed, addr)
	}
}

// deployAgent applies deploy/ through the overlay and checks scenario 1:
// the DaemonSet becomes Ready, the agent attached to the node's cgroup
// root (and not to the machine's), and its log holds no warning or error
// at steady state.
func (e *nodeEnv) deployAgent(t *testing.T, variant string) {
	applied := time.Now()
	e.apply(t, "socklb-"+variant, e.renderOverlay(t, variant))
	pod, _ := e.waitDaemonSet(t, 3*time.Minute)
	t.Logf("scenario 1 (%s): DaemonSet Ready %v after kubectl apply (pod %s)", variant, time.Since(applied).Round(time.Millisecond), pod.Name)
	sc := pod.Spec.Containers[0].SecurityContext
	privileged := sc != nil && sc.Privileged != nil && *sc.Privileged
	if variant == "capabilities" && (privileged || sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 3) ||
		variant == "privileged" && !privileged {
		t.Errorf("agent pod %s: security context %+v, want the %s DaemonSet's", pod.Name, sc, variant)
	}
	e.checkAttachment(t)
	e.recordBPF(t)
	e.steadyLogs(t, pod.Name)
}

// steadyLogs waits out a few seconds of steady state and checks the
// agent's log, and that its container never restarted (kubectl logs
// shows only the current container's log).
func (e *nodeEnv) steadyLogs(t *testing.T, pod string) {
	time.Sleep(5 * time.Second)
	p, err := e.n.Client.CoreV1().Pods(agentNamespace).Get(t.Context(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 || !podReady(p) {
		t.Errorf("agent %s: containers %+v; want one, Ready, never restarted", pod, p.Status.ContainerStatuses)
	}
	all, problems := e.agentLogs(t, pod)
	for _, p := range problems {
		t.Errorf("agent %s logged: %s", pod, p)
	}
	t.Logf("agent %s: %d log lines, %d at WARN or above:\n%s", pod, strings.Count(all, "\n"), len(problems), all)
}

// bpftoolCgroup lists the programs attached to a cgroup directory.
func bpftoolCgroup(t testing.TB, dir string) []struct {
	ID         uint32 `json:"id"`
	AttachType string `json:"attach_type"`
	Name       string `json:"name"`
} {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", "cgroup", "show", dir).Output()
	if err != nil {
		t.Fatalf("bpftool cgroup show %s: %v", dir, err)
	}
	var progs []struct {
		ID         uint32 `json:"id"`
		AttachType string `json:"attach_type"`
		Name       string `json:"name"`
	}
	if len(strings.TrimSpace(string(out))) > 0 {
		if err := json.Unmarshal(out, &progs); err != nil {
			t.Fatalf("bpftool cgroup show %s: %v: %s", dir, err, out)
		}
	}
	return progs
}

// checkAttachment checks that socklb's programs are attached to the
// node's cgroup root in the cgroup2 hierarchy and not to the machine's.
func (e *nodeEnv) checkAttachment(t *testing.T) {
	dir := e.n.Cgroup2Dir
	progs := bpftoolCgroup(t, dir)
	var kinds []string
	ours := map[uint32]bool{}
	for _, p := range progs {
		kinds = append(kinds, p.AttachType)
		ours[p.ID] = true
	}
	slices.Sort(kinds)
	if want := socklbHooks(); !slices.Equal(kinds, want) {
		t.Errorf("attached to %s: %v; want exactly socklb's %v", dir, kinds, want)
	}
	t.Logf("attached to %s: %v", dir, kinds)
	for _, p := range bpftoolCgroup(t, e.n.Cgroup2Mount) {
		if ours[p.ID] {
			t.Errorf("socklb's program %+v is attached to the machine's cgroup2 root %s too", p, e.n.Cgroup2Mount)
		}
	}
}

// socklbHooks are the attach types of socklb's programs, sorted.
func socklbHooks() []string {
	h := []string{"cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg",
		"cgroup_udp4_recvmsg", "cgroup_udp6_recvmsg", "cgroup_inet4_getpeername", "cgroup_inet6_getpeername",
		"cgroup_sock_ops"}
	slices.Sort(h)
	return h
}

// recordBPF adds the programs attached to the node's cgroup root, and
// their maps, to the footprint checked after teardown (at once, so that
// the check covers them also when a later scenario fails); it returns
// the programs' IDs.
func (e *nodeEnv) recordBPF(t *testing.T) []uint32 {
	var progs, maps []uint32
	for _, p := range bpftoolCgroup(t, e.n.Cgroup2Dir) {
		progs = append(progs, p.ID)
		out, err := exec.Command("bpftool", "-j", "prog", "show", "id", fmt.Sprint(p.ID)).Output()
		if err != nil {
			t.Errorf("bpftool prog show id %d: %v", p.ID, err)
			continue
		}
		var info struct {
			MapIDs []uint32 `json:"map_ids"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Errorf("bpftool prog show id %d: %v", p.ID, err)
		}
		maps = append(maps, info.MapIDs...)
	}
	slices.Sort(maps)
	e.fp.AddBPF(progs, slices.Compact(maps))
	return progs
}

// deployWorkloads deploys CoreDNS (kube-dns), the web Deployment and
// Service in demo and a client pod in demo and in other.
func (e *nodeEnv) deployWorkloads(t *testing.T) {
	manifest := readRepoFile(t, e.repo, "tests/node/deploy/coredns.yaml")
	e.apply(t, "coredns", fill(t, manifest, map[string]string{"COREDNS_IMAGE": corednsImage, "CLUSTER_DNS": clusterDNS}))
	c := e.n.Client
	create(t, "deployment web", func(ctx context.Context) (any, error) {
		return c.AppsV1().Deployments(demoNS).Create(ctx, webDeployment(3), metav1.CreateOptions{})
	})
	create(t, "service web", func(ctx context.Context) (any, error) {
		return c.CoreV1().Services(demoNS).Create(ctx, webService("web", corev1.ServiceTypeClusterIP), metav1.CreateOptions{})
	})
	// CoreDNS reaches the API server through the kubernetes Service's
	// ClusterIP, which only socklb serves here.
	took := e.waitDeployment(t, "kube-system", "coredns")
	t.Logf("CoreDNS ready %v after the web objects' creation (it lists Services through default/kubernetes's ClusterIP)", took.Round(time.Millisecond))
	e.waitDeployment(t, demoNS, "web")
}

func readRepoFile(t testing.TB, repo, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return string(b)
}

// balanced is scenario 2: names resolve to the ClusterIP from both
// namespaces, and 300 connects from each are spread over the three pods
// (each at least 20 %), with getpeername showing the ClusterIP.
func (e *nodeEnv) balanced(t *testing.T) {
	svc, err := e.n.Client.CoreV1().Services(demoNS).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	pods, err := e.webPods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	e.waitServed(t, pods)
	for _, c := range []struct {
		ns    string
		names []string
	}{
		{demoNS, []string{"web", "web.demo", "web.demo.svc.cluster.local"}},
		{otherNS, []string{"web.demo", "web.demo.svc.cluster.local"}},
	} {
		var resolved map[string][]string
		e.mustProbe(t, c.ns, "client", &resolved, append([]string{"resolve"}, c.names...)...)
		for _, name := range c.names {
			if got := resolved[name]; !slices.Equal(got, []string{vip}) {
				t.Errorf("from %s: %s resolved to %v, want [%s]", c.ns, name, got, vip)
			}
		}
		addr := c.names[0] + ":80"
		var r connectResult
		e.mustProbe(t, c.ns, "client", &r, "connect", "--addr", addr, "--count", "300")
		t.Logf("scenario 2: from %s, 300 connects to %s (%s:%d): backends %v, getpeername %v, failed %d, took %s",
			c.ns, addr, vip, webPort, r.Backends, r.Peers, r.Failed, r.Took)
		if r.Failed != 0 {
			t.Errorf("from %s: %d of 300 connects failed: %v", c.ns, r.Failed, r.Errors)
		}
		if !maps.Equal(r.Peers, map[string]int{fmt.Sprintf("%s:%d", vip, webPort): 300}) {
			t.Errorf("from %s: getpeername %v, want the ClusterIP %s:%d for all 300", c.ns, r.Peers, vip, webPort)
		}
		if len(pods) != 3 || len(r.Backends) != len(pods) {
			t.Errorf("from %s: answered by %v, want the %d pods %v", c.ns, r.Backends, len(pods), slices.Sorted(maps.Keys(pods)))
		}
		for name, n := range r.Backends {
			if !pods[name] {
				t.Errorf("from %s: %d answers from %s, not a ready web pod", c.ns, n, name)
			}
			if n < 60 {
				t.Errorf("from %s: %s answered %d of 300, want at least 20 %% (60)", c.ns, name, n)
			}
		}
	}
}

// waitServed waits until web's EndpointSlices list exactly the ready pods
// (the Deployment counts a pod ready before the EndpointSlice controller
// has written it, and the controller retries on a stale cache), then until
// connects from demo/client reach every one of them, so that the
// measured connects start from what the API server says.
func (e *nodeEnv) waitServed(t *testing.T, pods map[string]bool) {
	start := time.Now()
	waitFor(t, "web's EndpointSlices to list the ready pods", time.Minute, func(ctx context.Context) error {
		list, err := e.n.Client.DiscoveryV1().EndpointSlices(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=web"})
		if err != nil {
			return err
		}
		ready := map[string]bool{}
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				if ep.TargetRef != nil && ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready[ep.TargetRef.Name] = true
				}
			}
		}
		if !maps.Equal(ready, pods) {
			return fmt.Errorf("ready endpoints %v, ready pods %v", slices.Sorted(maps.Keys(ready)), slices.Sorted(maps.Keys(pods)))
		}
		return nil
	})
	sliced := time.Since(start)
	waitFor(t, "connects to reach every web pod", time.Minute, func(ctx context.Context) error {
		var r connectResult
		if err := e.probe(ctx, demoNS, "client", &r, "connect", "--addr", "web:80", "--count", "30"); err != nil {
			return err
		}
		if len(r.Backends) != len(pods) {
			return fmt.Errorf("30 connects reached %v", r.Backends)
		}
		return nil
	})
	t.Logf("web's EndpointSlice listed the %d ready pods %v after the check began, connects reached all %v after it",
		len(pods), sliced.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// dnsResult is nodeprobe dns's output.
type dnsResult struct {
	Mode    string   `json:"mode"`
	Server  string   `json:"server"`
	From    string   `json:"from"`
	Answers []string `json:"answers"`
	RCode   string   `json:"rcode"`
}

// dnsThreeWays is scenario 3: the kube-dns ClusterIP answers a resolver
// on connected UDP, one on unconnected sendto/recvfrom (which accepts
// only an answer whose source is the nameserver) and one over TCP.
func (e *nodeEnv) dnsThreeWays(t *testing.T) {
	svc, err := e.n.Client.CoreV1().Services(demoNS).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"udp-connected", "udp-sendto", "tcp"} {
		var r dnsResult
		e.mustProbe(t, otherNS, "client", &r, "dns", "--mode", mode, "--name", "web.demo.svc.cluster.local")
		t.Logf("scenario 3: %s to %s: answer from %s, rcode %s, A %v", mode, r.Server, r.From, r.RCode, r.Answers)
		if r.Server != clusterDNS+":53" || r.From != clusterDNS+":53" {
			t.Errorf("%s: asked %s, answer from %s; want both %s:53", mode, r.Server, r.From, clusterDNS)
		}
		if r.RCode != "RCodeSuccess" || !slices.Equal(r.Answers, []string{svc.Spec.ClusterIP}) {
			t.Errorf("%s: rcode %s, answers %v; want success and [%s]", mode, r.RCode, r.Answers, svc.Spec.ClusterIP)
		}
	}
}

// terminatingWatch records when each web pod began terminating.
type terminatingWatch struct {
	mu    sync.Mutex
	since map[string]time.Time
	stop  context.CancelFunc
	done  chan struct{}
}

func (e *nodeEnv) watchTerminating(t *testing.T) *terminatingWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &terminatingWatch{since: map[string]time.Time{}, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			pods, err := e.n.Client.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err == nil {
				now := time.Now()
				w.mu.Lock()
				for _, p := range pods.Items {
					if _, seen := w.since[p.Name]; p.DeletionTimestamp != nil && !seen {
						w.since[p.Name] = now
					}
				}
				w.mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// rolloutRestart is scenario 4: kubectl rollout restart of the web
// Deployment under a client loop. Target: no failed connect.
func (e *nodeEnv) rolloutRestart(t *testing.T) {
	before, err := e.webPods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	w := e.watchTerminating(t)
	loop := e.startLoop(t, demoNS, "client", "web:80", 20*time.Millisecond, 5*time.Minute)
	start := time.Now()
	e.mustKubectl(t, "-n", demoNS, "rollout", "restart", "deployment/web")
	e.mustKubectl(t, "-n", demoNS, "rollout", "status", "deployment/web", "--timeout=2m")
	// The old pods linger 3 s after SIGTERM; wait until they are gone.
	waitFor(t, "the old web pods gone", time.Minute, func(ctx context.Context) error {
		pods, err := e.n.Client.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if before[p.Name] {
				return fmt.Errorf("%s still exists", p.Name)
			}
		}
		return nil
	})
	rolled := time.Since(start)
	time.Sleep(2 * time.Second)
	r := loop.stop(t, start, start.Add(rolled))
	w.stop()
	<-w.done
	after, err := e.webPods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// A connect that reached a pod after it began terminating: served by
	// its lingering server, but sent there before socklb had dropped it.
	late := map[string]int{}
	w.mu.Lock()
	for _, ev := range r.Timeline {
		if at, ok := w.since[ev.Result]; ok && time.UnixMilli(ev.At).After(at) {
			late[ev.Result]++
		}
	}
	w.mu.Unlock()
	if len(r.Timeline) != r.Connects || len(w.since) < len(before) {
		t.Fatalf("the measurement is incomplete: %d of %d connects in the timeline, %d of the %d old pods seen terminating",
			len(r.Timeline), r.Connects, len(w.since), len(before))
	}
	t.Logf("scenario 4: rollout restart took %v; the client loop made %d connects in %s: %d failed %v; answers %v; %d connects went to a pod after it began terminating %v (served while it drained); a connect to a pod already gone gets no answer and is among the failed, by error",
		rolled.Round(time.Millisecond), r.Connects, r.Took, r.Failed, r.Errors, r.Backends, sum(late), late)
	if r.Failed != 0 {
		t.Errorf("%d of %d connects failed during the rollout: %v", r.Failed, r.Connects, r.Errors)
	}
	for name := range after {
		if r.Backends[name] == 0 {
			t.Errorf("new pod %s got no connect during the loop: %v", name, r.Backends)
		}
	}
	if len(after) != 3 {
		t.Errorf("after the rollout: %d ready pods, want 3", len(after))
	}
}

func sum(m map[string]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

// agentUpgrade is scenario 5: kubectl set image of the DaemonSet to the
// image's second tag, then kubectl delete pod of the agent, each under a
// client loop. Target: no failed connect; the programs serve while no
// agent runs.
func (e *nodeEnv) agentUpgrade(t *testing.T) {
	old, _ := e.waitDaemonSet(t, time.Minute)
	loop := e.startLoop(t, demoNS, "client", "web:80", 20*time.Millisecond, 5*time.Minute)
	start := time.Now()
	e.mustKubectl(t, "-n", agentNamespace, "set", "image", "daemonset/"+agentDaemonSet, "agent="+e.agentSecond)
	e.mustKubectl(t, "-n", agentNamespace, "rollout", "status", "daemonset/"+agentDaemonSet, "--timeout=2m")
	upgraded, _ := e.waitDaemonSet(t, 2*time.Minute)
	upgradeTook := time.Since(start)
	if upgraded.Name == old.Name || upgraded.Spec.Containers[0].Image != e.agentSecond {
		t.Errorf("after set image: pod %s runs %s; want a new pod running %s", upgraded.Name, upgraded.Spec.Containers[0].Image, e.agentSecond)
	}
	r1 := loop.stop(t, start, start.Add(upgradeTook))
	t.Logf("scenario 5: set image %s → Ready in %v (pod %s → %s); the client loop made %d connects: %d failed %v",
		e.agentSecond, upgradeTook.Round(time.Millisecond), old.Name, upgraded.Name, r1.Connects, r1.Failed, r1.Errors)

	loop = e.startLoop(t, demoNS, "client", "web:80", 20*time.Millisecond, 5*time.Minute)
	start = time.Now()
	e.mustKubectl(t, "-n", agentNamespace, "delete", "pod", upgraded.Name, "--wait=true", "--timeout=2m")
	replaced, _ := e.waitDaemonSet(t, 2*time.Minute)
	deleteTook := time.Since(start)
	r2 := loop.stop(t, start, start.Add(deleteTook))
	// From the delete to the new agent's readiness: the old agent exits
	// and, until the new one runs, only the kernel's programs serve.
	gap, gapFailed := r2.between(start, start.Add(deleteTook))
	t.Logf("scenario 5: delete pod %s → %s Ready in %v; the client loop made %d connects: %d failed %v; %d of them (%d failed) between the delete and the new agent's readiness",
		upgraded.Name, replaced.Name, deleteTook.Round(time.Millisecond), r2.Connects, r2.Failed, r2.Errors, gap, gapFailed)
	if gap < 10 {
		t.Errorf("only %d connects between the agent's delete and its replacement's readiness: the loop did not cover the gap", gap)
	}
	for _, r := range []connectResult{r1, r2} {
		if r.Failed != 0 {
			t.Errorf("%d of %d connects failed while the agent was replaced: %v", r.Failed, r.Connects, r.Errors)
		}
	}
	e.steadyLogs(t, replaced.Name)
}

// nodePortMetrics is scenario 6: a NodePort Service reached from a pod at
// the node IP; the agent's metrics at the node IP:9810 count exactly the
// client's connects.
func (e *nodeEnv) nodePortMetrics(t *testing.T) {
	svc := create(t, "service web-np", func(ctx context.Context) (*corev1.Service, error) {
		return e.n.Client.CoreV1().Services(demoNS).Create(ctx, webService("web-np", corev1.ServiceTypeNodePort), metav1.CreateOptions{})
	})
	nodePort := svc.Spec.Ports[0].NodePort
	series := `socklb_service_connects_total{namespace="demo",port="",service="web-np"}`
	var before float64
	waitFor(t, "the agent's metrics to list "+series, time.Minute, func(ctx context.Context) error {
		s, err := e.scrape(ctx)
		if err != nil {
			return err
		}
		v, ok := sample(s, series)
		if !ok {
			return fmt.Errorf("no %s yet", series)
		}
		before = v
		return nil
	})
	const connects = 50
	addr := fmt.Sprintf("%s:%d", e.n.IP, nodePort)
	var r connectResult
	e.mustProbe(t, demoNS, "client", &r, "connect", "--addr", addr, "--count", fmt.Sprint(connects))
	s, err := e.scrape(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	after, _ := sample(s, series)
	t.Logf("scenario 6: %d connects from demo/client to the node IP %s (NodePort): backends %v, failed %d; %s %v → %v at %s:9810",
		connects, addr, r.Backends, r.Failed, series, before, after, e.n.IP)
	if r.Failed != 0 {
		t.Errorf("%d of %d NodePort connects failed: %v", r.Failed, connects, r.Errors)
	}
	if len(r.Backends) != 3 {
		t.Errorf("NodePort connects reached %v, want all 3 web pods", r.Backends)
	}
	if after-before != connects {
		t.Errorf("%s grew by %v, want exactly %d", series, after-before, connects)
	}
}

// switchToCapabilities applies the capabilities-only DaemonSet over the
// privileged one under a client loop (no failed connect), then checks
// scenario 1 for it.
func (e *nodeEnv) switchToCapabilities(t *testing.T) {
	loop := e.startLoop(t, demoNS, "client", "web:80", 20*time.Millisecond, 5*time.Minute)
	start := time.Now()
	e.deployAgent(t, "capabilities")
	r := loop.stop(t, start, time.Now())
	t.Logf("privileged → capabilities-only DaemonSet: the client loop made %d connects: %d failed %v", r.Connects, r.Failed, r.Errors)
	if r.Failed != 0 {
		t.Errorf("%d of %d connects failed while the DaemonSet changed: %v", r.Failed, r.Connects, r.Errors)
	}
}

// removeAgent takes socklb off the node as the README says: delete the
// DaemonSet, then `socklb-agent cleanup` on the node. Afterwards nothing
// is attached and no pin is left, so the next deploy starts from
// nothing: its agent creates the maps, loads and attaches the programs
// with its own privileges.
func (e *nodeEnv) removeAgent(t *testing.T) {
	e.takeOffSocklb(t)
	e.noClusterIP(t, "after the DaemonSet's delete and cleanup")
}

// takeOffSocklb deletes the DaemonSet, waits for its pods to go, and runs
// `socklb-agent cleanup` on the node; no pin may be left.
func (e *nodeEnv) takeOffSocklb(t *testing.T) {
	e.mustKubectl(t, "-n", agentNamespace, "delete", "daemonset", agentDaemonSet, "--wait=true", "--timeout=2m")
	waitFor(t, "the agent pods gone", 2*time.Minute, func(ctx context.Context) error {
		pods, err := e.n.Client.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d agent pods left", len(pods.Items))
		}
		return nil
	})
	agent := filepath.Join(e.repo, "bin", "socklb-agent")
	out := e.n.Run(t, agent, "cleanup", "--bpffs-path=/sys/fs/bpf/socklb", "--cgroup-path="+e.n.Cgroup2Dir)
	t.Logf("socklb-agent cleanup on the node:\n%s", strings.TrimSpace(out))
	if left := strings.TrimSpace(e.n.Run(t, "sh", "-c", "ls -A /sys/fs/bpf/socklb 2>/dev/null || true")); left != "" {
		t.Errorf("pins left after cleanup: %s", left)
	}
}

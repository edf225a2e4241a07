package scenarios

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/socklb/socklb/tests/e2e/cluster"
)

var web = labelsOf("app", "web")

// TestPrivilegedSelectedPodsReady: a Service with a label selector, Pods
// made Ready → connects reach exactly the selected pods, evenly.
func TestPrivilegedSelectedPodsReady(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	for i := 1; i <= 3; i++ {
		e.pod(t, fmt.Sprintf("web-%d", i), fmt.Sprintf("198.18.0.%d", i), "node-a", web, true)
	}
	e.pod(t, "other", "198.18.0.9", "node-a", labelsOf("app", "other"), true)
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2", "web-3")

	got := e.spread(t, a, vip(svc, 80), 300)
	t.Logf("300 connects to %s: %v", vip(svc, 80), got)
	for i := 1; i <= 3; i++ {
		n := got[fmt.Sprintf("web-%d", i)]
		if share := float64(n) / 300; share < 0.20 || share > 0.47 {
			t.Errorf("web-%d got %d of 300 connects (%.0f%%), want 20%%..47%%", i, n, share*100)
		}
	}
	if len(got) != 3 {
		t.Errorf("outcomes %v, want only the three selected pods", got)
	}
}

// TestPrivilegedPodNotReadyOrDeleted: a pod that turns NotReady, then one
// that is deleted, gets no new connects.
func TestPrivilegedPodNotReadyOrDeleted(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	for i := 1; i <= 3; i++ {
		e.pod(t, fmt.Sprintf("web-%d", i), fmt.Sprintf("198.18.0.%d", i), "node-a", web, true)
	}
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2", "web-3")

	e.c.SetPodReady(t, testNS, "web-1", false)
	e.waitOutcomes(t, a, vip(svc, 80), "web-2", "web-3")
	if got := e.spread(t, a, vip(svc, 80), 100); got["web-1"] != 0 {
		t.Errorf("NotReady web-1 still got %d of 100 connects", got["web-1"])
	}

	// Deleted, but still terminating (no kubelet confirms it): the pod
	// gets no connects while a ready endpoint exists.
	if err := e.c.Client.CoreV1().Pods(testNS).Delete(ctxFor(t), "web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, vip(svc, 80), "web-3")
	if got := e.spread(t, a, vip(svc, 80), 100); got["web-3"] != 100 {
		t.Errorf("after web-2 was deleted: %v, want all 100 on web-3", got)
	}

	// No ready endpoint left: kube-proxy falls back to the serving,
	// terminating ones, and so does socklb.
	e.c.SetPodReady(t, testNS, "web-3", false)
	e.waitOutcomes(t, a, vip(svc, 80), "web-2")

	// Gone for good: nothing left, refused as kube-proxy rejects.
	zero := int64(0)
	if err := e.c.Client.CoreV1().Pods(testNS).Delete(ctxFor(t), "web-2", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, vip(svc, 80), "refused")
}

// TestPrivilegedServiceDeleted: once the Service is gone its VIP is no
// longer rewritten.
func TestPrivilegedServiceDeleted(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1")
	if err := e.c.Client.CoreV1().Services(testNS).Delete(ctxFor(t), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, vip(svc, 80), "unreachable")
}

// TestPrivilegedPortAdded: a port added to a live Service works.
func TestPrivilegedPortAdded(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-2", "198.18.0.2", "node-a", web, true)
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2")
	// A port the Service does not have yet: refused at once, as
	// kube-proxy's nftables mode rejects it.
	e.waitOutcomes(t, a, vip(svc, 81), "refused")

	svc, err := e.c.Client.CoreV1().Services(testNS).Get(ctxFor(t), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "alt", Port: 81, TargetPort: intstr.FromString("alt")})
	if _, err := e.c.Client.CoreV1().Services(testNS).Update(ctxFor(t), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, vip(svc, 81), "web-1-alt", "web-2-alt")
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2")
}

// TestPrivilegedInternalTrafficPolicyLocal: two agents act as two nodes;
// each reaches only the endpoints on its own node.
func TestPrivilegedInternalTrafficPolicyLocal(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	b := e.node(t, "node-b", "")
	e.startAgent(t, a)
	e.startAgent(t, b)
	e.pod(t, "web-a1", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-b1", "198.18.0.2", "node-b", web, true)
	e.pod(t, "web-b2", "198.18.0.3", "node-b", web, true)
	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := e.service(t, "web", web, func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &local })
	all := e.service(t, "web-all", web, nil)

	e.waitOutcomes(t, a, vip(svc, 80), "web-a1")
	e.waitOutcomes(t, b, vip(svc, 80), "web-b1", "web-b2")
	e.waitOutcomes(t, a, vip(all, 80), "web-a1", "web-b1", "web-b2")

	// The local pod goes: node-a has no local endpoint left → refused,
	// while node-b is unaffected. So that node-b's answer is not just
	// from before it saw the change, a later change joins the same slice
	// (web-b3, ready on node-b) and node-b must show it: having seen the
	// later version of the slice, it has seen the earlier one.
	e.c.SetPodReady(t, testNS, "web-a1", false)
	e.waitOutcomes(t, a, vip(svc, 80), "refused")
	e.pod(t, "web-b3", "198.18.0.4", "node-b", web, true)
	e.waitOutcomes(t, b, vip(svc, 80), "web-b1", "web-b2", "web-b3")
	e.waitOutcomes(t, a, vip(svc, 80), "refused")
}

// TestPrivilegedPreferClose: with trafficDistribution PreferClose and two
// zones, each node reaches the endpoints of its own zone.
func TestPrivilegedPreferClose(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "zone-1")
	b := e.node(t, "node-b", "zone-2")
	e.startAgent(t, a)
	e.startAgent(t, b)
	e.pod(t, "web-z1a", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-z1b", "198.18.0.2", "node-a", web, true)
	e.pod(t, "web-z2a", "198.18.0.3", "node-b", web, true)
	prefer := corev1.ServiceTrafficDistributionPreferClose
	svc := e.service(t, "web", web, func(s *corev1.Service) { s.Spec.TrafficDistribution = &prefer })

	e.waitOutcomes(t, a, vip(svc, 80), "web-z1a", "web-z1b")
	e.waitOutcomes(t, b, vip(svc, 80), "web-z2a")

	// Zone-2 loses its endpoint: node-b falls back to every endpoint.
	e.c.SetPodReady(t, testNS, "web-z2a", false)
	e.waitOutcomes(t, b, vip(svc, 80), "web-z1a", "web-z1b")
}

// TestPrivilegedServiceSelector: an agent with --service-selector handles
// only the Services it selects, and follows label changes.
func TestPrivilegedServiceSelector(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a, "--service-selector=env in (prod, qa), tier notin (frontend)")
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	withLabels := func(kv ...string) func(*corev1.Service) {
		return func(s *corev1.Service) { s.Labels = labelsOf(kv...) }
	}
	qaFront := e.service(t, "qa-front", web, withLabels("env", "qa", "tier", "frontend"))
	dev := e.service(t, "dev", web, withLabels("env", "dev"))
	// Created last: the agent watches Services in order, so once it
	// serves prod it has seen the two before, and their VIPs left alone
	// mean they were not selected (not that they were not seen yet).
	prod := e.service(t, "prod", web, withLabels("env", "prod"))

	e.waitOutcomes(t, a, vip(prod, 80), "web-1")
	e.waitOutcomes(t, a, vip(qaFront, 80), "unreachable")
	e.waitOutcomes(t, a, vip(dev, 80), "unreachable")

	dev.Labels["env"] = "qa"
	if _, err := e.c.Client.CoreV1().Services(testNS).Update(ctxFor(t), dev, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, vip(dev, 80), "web-1")
}

// loop connects to addrs from n's cgroup until stopped and counts connects
// and failures per address.
type loop struct {
	mu       sync.Mutex
	total    map[string]int
	failures map[string][]error
}

// count is how many connects to addr completed so far.
func (l *loop) count(addr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total[addr]
}

// waitConnects waits until n more connects to addr completed. The bound is
// for a loop that is stuck, far above what a slow machine needs.
func (l *loop) waitConnects(t *testing.T, addr string, n int) {
	t.Helper()
	start := l.count(addr)
	cluster.WaitFor(t, fmt.Sprintf("%d more connects to %s", n, addr), 2*time.Minute, func(context.Context) (bool, error) {
		return l.count(addr) >= start+n, nil
	})
}

// runLoop starts the loop; stop ends it (once) and returns it.
func (e *env) runLoop(t *testing.T, n *node, addrs ...string) (l *loop, stop func() *loop) {
	t.Helper()
	restore, err := n.cg.EnterSelf()
	if err != nil {
		t.Fatal(err)
	}
	l = &loop{total: map[string]int{}, failures: map[string][]error{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_, err := e.ask(addr)
				l.mu.Lock()
				l.total[addr]++
				if err != nil {
					l.failures[addr] = append(l.failures[addr], err)
				}
				l.mu.Unlock()
				// Pacing, not waiting for anything: the control plane
				// shares the machine's CPUs with this loop.
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	stopped := false
	stop = func() *loop {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
			if err := restore(); err != nil {
				t.Error(err)
			}
		}
		return l
	}
	t.Cleanup(func() { stop() })
	return l, stop
}

// TestPrivilegedAPIServerOutage: while the API server is down the
// dataplane keeps serving unchanged, and the agent keeps syncing from what
// it has (each node address added during the outage makes it sync); changes
// made after the API server returns are applied. The outage lasts until
// those syncs happened and outageConnects connects completed in it, not
// for a time.
func TestPrivilegedAPIServerOutage(t *testing.T) {
	const outageSyncs, outageConnects = 3, 1000
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	agent := e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-2", "198.18.0.2", "node-a", web, true)
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2")
	client, metrics := e.httpClient(), "http://"+listenAddr(t, agent, "metrics")+"/metrics"
	syncs := func() float64 { return value(scrape(t, client, metrics), "socklb_sync_duration_seconds", nil) }

	l, stop := e.runLoop(t, a, vip(svc, 80))
	e.c.StopAPIServer(t)
	for i := range outageSyncs {
		before := syncs()
		if err := e.c.NS.AddAddr(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 202, byte(i + 1)}), 32)); err != nil {
			t.Fatal(err)
		}
		cluster.WaitFor(t, fmt.Sprintf("a sync after node address %d was added during the outage", i+1), waitLong,
			func(context.Context) (bool, error) { return syncs() > before, nil })
	}
	l.waitConnects(t, vip(svc, 80), outageConnects)
	if rows, _ := a.inspect(t); len(rows[vip(svc, 80)+"/TCP"].Backends) != 2 {
		t.Errorf("after %d syncs during the outage, web is %+v; want its 2 backends unchanged", outageSyncs, rows[vip(svc, 80)+"/TCP"])
	}
	// The loop leaves the client cgroup before the API server starts
	// again, so that the new process is not born inside it.
	stop()
	e.c.StartAPIServer(t)
	t.Logf("%d connects during the outage: %d failed", l.total[vip(svc, 80)], len(l.failures[vip(svc, 80)]))
	if f := l.failures[vip(svc, 80)]; len(f) != 0 {
		t.Errorf("%d connects failed while the API server was down; first: %v", len(f), f[0])
	}
	select {
	case <-agent.Done():
		t.Fatalf("the agent exited during the outage:\n%s", agent.Logs())
	default:
	}

	// The controller manager's reflectors reconnect with a jittered
	// backoff of up to a minute after such an outage, so the slice may
	// change late; what the agent adds after that is measured apart.
	start := time.Now()
	e.c.SetPodReady(t, testNS, "web-1", false)
	cluster.WaitFor(t, "the slice to mark web-1 not ready", 3*time.Minute, func(ctx context.Context) (bool, error) {
		list, err := e.c.Client.DiscoveryV1().EndpointSlices(testNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				if slices.Contains(ep.Addresses, "198.18.0.1") && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					return true, nil
				}
			}
		}
		return false, nil
	})
	sliceAt := time.Now()
	// The agent's own reflectors back off the same way (client-go's
	// default, capped at 30 s with full jitter), as kube-proxy's do.
	e.waitOutcomesFor(t, 90*time.Second, a, vip(svc, 80), "web-2")
	t.Logf("first change after the outage: EndpointSlice updated after %s, dataplane %s later",
		sliceAt.Sub(start).Round(time.Millisecond), time.Since(sliceAt).Round(time.Millisecond))
}

// TestPrivilegedAgentRestartConverges: Services change while the agent is
// down; the restarted agent converges, and connects to a Service that kept
// ready endpoints never fail. The agent stays down until the API server
// shows every change and restartConnects connects completed without it.
func TestPrivilegedAgentRestartConverges(t *testing.T) {
	const restartConnects = 200
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	agent := e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-2", "198.18.0.2", "node-a", web, true)
	e.pod(t, "api-1", "198.18.0.5", "node-a", labelsOf("app", "api"), true)
	svc := e.service(t, "web", web, nil)
	api := e.service(t, "api", labelsOf("app", "api"), nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2")
	e.waitOutcomes(t, a, vip(api, 80), "api-1")

	l, stop := e.runLoop(t, a, vip(svc, 80))
	agent.Kill(syscall.SIGTERM)
	// While it is down: web gains web-3 and loses web-1, api is deleted.
	e.pod(t, "web-3", "198.18.0.3", "node-a", web, true)
	e.c.SetPodReady(t, testNS, "web-1", false)
	if err := e.c.Client.CoreV1().Services(testNS).Delete(ctxFor(t), "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The EndpointSlice controller applies the pod changes on its own
	// time: wait until the API server has them, so that the restarted
	// agent finds them in its first list rather than watching them arrive.
	cluster.WaitFor(t, "web's slices to show web-3 ready and web-1 not ready, and api gone", waitLong, func(ctx context.Context) (bool, error) {
		ready, err := sliceReadiness(ctx, e.c.Client, "web")
		if err != nil {
			return false, err
		}
		if _, err := e.c.Client.CoreV1().Services(testNS).Get(ctx, "api", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return false, err
		}
		return ready["198.18.0.3"] && !ready["198.18.0.1"], nil
	})
	l.waitConnects(t, vip(svc, 80), restartConnects)
	e.startAgent(t, a)
	stop()

	e.waitOutcomes(t, a, vip(svc, 80), "web-2", "web-3")
	e.waitOutcomes(t, a, vip(api, 80), "unreachable")
	t.Logf("%d connects to web across the restart: %d failed", l.total[vip(svc, 80)], len(l.failures[vip(svc, 80)]))
	if f := l.failures[vip(svc, 80)]; len(f) != 0 {
		t.Errorf("%d connects to web failed across the restart; first: %v", len(f), f[0])
	}
}

// sliceReadiness is, for every endpoint address in the EndpointSlices of
// Service svc, whether a slice marks it ready.
func sliceReadiness(ctx context.Context, client kubernetes.Interface, svc string) (map[string]bool, error) {
	list, err := client.DiscoveryV1().EndpointSlices(testNS).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		return nil, err
	}
	ready := map[string]bool{}
	for _, sl := range list.Items {
		for _, ep := range sl.Endpoints {
			for _, addr := range ep.Addresses {
				ready[addr] = ready[addr] || ep.Conditions.Ready != nil && *ep.Conditions.Ready
			}
		}
	}
	return ready, nil
}

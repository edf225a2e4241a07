package kubeproxy_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/tests/bench/kubeproxy"
	"github.com/socklb/socklb/tests/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	nodeName = "bench-node"
	backend  = "198.18.0.1"
	port     = 8080
)

// TestPrivilegedKubeProxy runs kube-proxy in each mode (and iptables mode
// with each backend) against a hand-made Service and EndpointSlice, and
// connects to the ClusterIP from inside the cluster's namespace. The
// host's firewall must not change.
func TestPrivilegedKubeProxy(t *testing.T) {
	before, err := kubeproxy.SnapshotHostFirewall()
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: after the cluster and its
	// namespace are gone.
	t.Cleanup(func() {
		after, err := kubeproxy.SnapshotHostFirewall()
		if err != nil {
			t.Error(err)
			return
		}
		if ok, diff := before.Equal(after); !ok {
			t.Errorf("the host's firewall changed:\n%s", diff)
		}
	})
	t.Logf("host: %d rulesets, nf_conntrack_max %s, hashsize %s", len(before.Rulesets),
		before.Sysctls["/proc/sys/net/netfilter/nf_conntrack_max"], before.Sysctls["/sys/module/nf_conntrack/parameters/hashsize"])

	c := cluster.StartWith(t, cluster.Options{WithoutControllerManager: true})
	c.CreateNode(t, nodeName, "")
	testagent.StartPod(t, c.NS, "backend-1", backend, port)
	vip := createService(t, c)
	t.Logf("ClusterIP %s, backend %s:%d", vip, backend, port)
	if got, err := testagent.Ask(c.NS, "tcp4", vip.String()); err == nil {
		t.Fatalf("before kube-proxy runs, ClusterIP %s answers %q", vip, got)
	}

	t.Run("errors", func(t *testing.T) {
		stubsBefore, _ := filepath.Glob(filepath.Join(os.TempDir(), "socklb-kube-proxy-bin-*"))
		for _, cfg := range []kubeproxy.Config{
			{Mode: "ipvs", NodeName: nodeName},
			{Mode: kubeproxy.NFTables},
			{Mode: kubeproxy.NFTables, NodeName: "no-such-node"},
			{Mode: kubeproxy.IPTables, NodeName: nodeName, Backend: "no-such-backend"},
			{Mode: kubeproxy.IPTables, NodeName: nodeName, Args: []string{"--no-such-flag"}}, // exits at once
		} {
			if p, _, err := kubeproxy.StartConfig(t.Context(), c, cfg); err == nil {
				t.Errorf("StartConfig(%+v) started pid %d, want an error", cfg, p.PID)
			} else {
				t.Logf("StartConfig(%+v): %v", cfg, err)
			}
		}
		if stubs, _ := filepath.Glob(filepath.Join(os.TempDir(), "socklb-kube-proxy-bin-*")); len(stubs) != len(stubsBefore) {
			t.Errorf("failed starts left %v", stubs)
		}
		if left, err := kubeproxy.Leftovers(t.Context(), c.NS); err != nil || len(left) > 0 {
			t.Errorf("failed starts left rules: %v, %v", left, err)
		}
	})

	for _, tc := range []struct {
		name string
		cfg  kubeproxy.Config
	}{
		{"iptables-nft", kubeproxy.Config{Mode: kubeproxy.IPTables}},
		{"iptables-legacy", kubeproxy.Config{Mode: kubeproxy.IPTables, Backend: kubeproxy.BackendLegacy}},
		{"nftables", kubeproxy.Config{Mode: kubeproxy.NFTables}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.NodeName, cfg.LogDir = nodeName, t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			p, stop, err := kubeproxy.StartConfig(ctx, c, cfg)
			if err != nil {
				t.Fatal(err)
			}
			stopped := false
			t.Cleanup(func() {
				if !stopped {
					if err := stop(); err != nil {
						t.Error(err)
					}
				}
				if t.Failed() {
					data, _ := os.ReadFile(p.Log)
					t.Logf("kube-proxy log:\n%s", data)
				}
			})
			n, err := p.WaitSynced(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pid %d, first sync after %v (sync count %v)", p.PID, time.Since(start).Round(time.Millisecond), n)

			cluster.WaitFor(t, "rules for "+vip.String(), 30*time.Second, func(ctx context.Context) (bool, error) {
				return p.RulesFor(ctx, vip)
			})
			for _, network := range []string{"tcp4", "udp4"} {
				got, err := testagent.Ask(c.NS, network, vip.String())
				if err != nil || got != "backend-1" {
					t.Errorf("%s to ClusterIP %s: %q, %v; want backend-1", network, vip, got, err)
				}
			}
			other := netip.AddrPortFrom(vip.Addr(), 81)
			if ok, err := p.RulesFor(ctx, other); err != nil || ok {
				t.Errorf("RulesFor(%s) = %v, %v; want false", other, ok, err)
			}
			if rss, err := p.RSS(); err != nil || rss == 0 {
				t.Errorf("RSS() = %d, %v", rss, err)
			} else {
				t.Logf("RSS %.1f MiB", float64(rss)/(1<<20))
			}
			if n, err := p.SyncCount(ctx); err != nil || n < 1 {
				t.Errorf("SyncCount() = %v, %v; want ≥ 1", n, err)
			}

			stopped = true
			if err := stop(); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if err := stop(); err != nil {
				t.Errorf("second stop: %v", err)
			}
			left, err := kubeproxy.Leftovers(ctx, c.NS)
			if err != nil || len(left) > 0 {
				t.Errorf("after stop: leftovers %v, %v", left, err)
			}
			if got, err := testagent.Ask(c.NS, "tcp4", vip.String()); err == nil {
				t.Errorf("after stop, ClusterIP %s still answers %q", vip, got)
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(p.PID)); err == nil {
				t.Errorf("kube-proxy pid %d still exists after stop", p.PID)
			}
		})
	}
}

// createService creates default/web (TCP 80 and UDP 53, both to the
// backend's port 8080) and its EndpointSlice by hand, and returns the
// ClusterIP with port 80.
func createService(t *testing.T, c *cluster.Cluster) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(port)},
			{Name: "dns", Port: 80, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(port)},
		}},
	}
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready, node := true, nodeName
	tcp, udp, p := corev1.ProtocolTCP, corev1.ProtocolUDP, int32(port)
	http, dns := "http", "dns"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "web-1",
			Namespace: "default",
			Labels:    map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "socklb-bench"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{backend},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName:   &node,
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: &http, Port: &p, Protocol: &tcp},
			{Name: &dns, Port: &p, Protocol: &udp},
		},
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
}

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const wait = 30 * time.Second

var serviceRange = netip.MustParsePrefix(cluster.ServiceCIDR)

// endpointState is what the tests check of one EndpointSlice endpoint.
type endpointState struct {
	addr  string
	ready bool
	node  string
	zone  string
}

// sliceState returns the endpoints and ports of the service's slices.
// Endpoints are keyed by pod name, with "/IPv6" added for IPv6 slices.
func sliceState(ctx context.Context, cs kubernetes.Interface, ns, svc string) (map[string]endpointState, []string, error) {
	list, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		return nil, nil, err
	}
	eps := map[string]endpointState{}
	var ports []string
	for _, s := range list.Items {
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s/%d/%s/%s", deref(p.Name), deref(p.Port), deref(p.Protocol), s.AddressType))
		}
		for _, ep := range s.Endpoints {
			name := ""
			if ep.TargetRef != nil {
				name = ep.TargetRef.Name
			}
			if s.AddressType != discoveryv1.AddressTypeIPv4 {
				name += "/" + string(s.AddressType)
			}
			eps[name] = endpointState{
				addr:  strings.Join(ep.Addresses, ","),
				ready: ep.Conditions.Ready != nil && *ep.Conditions.Ready,
				node:  deref(ep.NodeName),
				zone:  deref(ep.Zone),
			}
		}
	}
	return eps, ports, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func webService(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name:       "http",
				Port:       80,
				Protocol:   corev1.ProtocolTCP,
				TargetPort: intstr.FromString("web"), // named: resolved from the pods' ports
			}},
		},
	}
}

func waitSlices(t *testing.T, c *cluster.Cluster, ns, svc string, want map[string]endpointState, wantPorts []string) {
	t.Helper()
	var got map[string]endpointState
	var gotPorts []string
	cluster.WaitFor(t, fmt.Sprintf("EndpointSlices of %s/%s", ns, svc), wait, func(ctx context.Context) (bool, error) {
		var err error
		got, gotPorts, err = sliceState(ctx, c.Client, ns, svc)
		if err != nil {
			return false, err
		}
		slices.Sort(gotPorts)
		if !equalMaps(got, want) || !slices.Equal(gotPorts, wantPorts) {
			return false, fmt.Errorf("endpoints %+v ports %v, want %+v ports %v", got, gotPorts, want, wantPorts)
		}
		return true, nil
	})
}

func equalMaps(a, b map[string]endpointState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestPrivilegedClusterEndpointSlices(t *testing.T) {
	start := time.Now()
	c := cluster.Start(t)
	t.Logf("cluster ready in %v", time.Since(start).Round(time.Millisecond))
	ctx := t.Context()

	c.CreateNode(t, "node-a", "zone-a")
	c.CreateNode(t, "node-b", "zone-b")
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, webService("web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !serviceRange.Contains(ip) {
		t.Fatalf("ClusterIP %q (%v), want one in %s", svc.Spec.ClusterIP, err, serviceRange)
	}

	labels := map[string]string{"app": "web"}
	port := corev1.ContainerPort{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}
	c.CreatePod(t, "default", "web-1", labels, "node-a", "198.18.0.11", port)
	c.CreatePod(t, "default", "web-2", labels, "node-b", "198.18.0.12", port)
	c.CreatePod(t, "default", "other", map[string]string{"app": "other"}, "node-a", "198.18.0.13", port)
	c.SetPodReady(t, "default", "web-1", true)
	c.SetPodReady(t, "default", "web-2", true)

	ports := []string{"http/8080/TCP/IPv4"}
	waitSlices(t, c, "default", "web", map[string]endpointState{
		"web-1": {addr: "198.18.0.11", ready: true, node: "node-a", zone: "zone-a"},
		"web-2": {addr: "198.18.0.12", ready: true, node: "node-b", zone: "zone-b"},
	}, ports)

	c.SetPodReady(t, "default", "web-2", false)
	waitSlices(t, c, "default", "web", map[string]endpointState{
		"web-1": {addr: "198.18.0.11", ready: true, node: "node-a", zone: "zone-a"},
		"web-2": {addr: "198.18.0.12", ready: false, node: "node-b", zone: "zone-b"},
	}, ports)

	// The garbage collector removes the slices of a deleted service.
	if err := c.Client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSlices(t, c, "default", "web", map[string]endpointState{}, nil)
}

func TestPrivilegedClusterDualStackMultiPort(t *testing.T) {
	c := cluster.Start(t)
	ctx := t.Context()
	c.CreateNode(t, "node-a", "")
	policy := corev1.IPFamilyPolicyRequireDualStack
	svc := webService("dual")
	svc.Spec.IPFamilyPolicy = &policy
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
		Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353),
	})
	svc, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v6Range := netip.MustParsePrefix(cluster.ServiceCIDRv6)
	if ips := svc.Spec.ClusterIPs; len(ips) != 2 || !serviceRange.Contains(netip.MustParseAddr(ips[0])) || !v6Range.Contains(netip.MustParseAddr(ips[1])) {
		t.Fatalf("ClusterIPs %v, want one in %s and one in %s", ips, serviceRange, v6Range)
	}
	c.CreatePod(t, "default", "dual-1", map[string]string{"app": "dual"}, "node-a", "198.18.0.21,2001:2::21",
		corev1.ContainerPort{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	c.SetPodReady(t, "default", "dual-1", true)
	waitSlices(t, c, "default", "dual", map[string]endpointState{
		"dual-1":      {addr: "198.18.0.21", ready: true, node: "node-a"},
		"dual-1/IPv6": {addr: "2001:2::21", ready: true, node: "node-a"},
	}, []string{"dns/5353/UDP/IPv4", "dns/5353/UDP/IPv6", "http/8080/TCP/IPv4", "http/8080/TCP/IPv6"})
}

func TestPrivilegedClusterAPIServerRestart(t *testing.T) {
	c := cluster.Start(t)
	ctx := t.Context()
	c.CreateNode(t, "node-a", "zone-a")
	if _, err := c.Client.CoreV1().Services("default").Create(ctx, webService("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	port := corev1.ContainerPort{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}
	c.CreatePod(t, "default", "web-1", map[string]string{"app": "web"}, "node-a", "198.18.0.11", port)
	c.SetPodReady(t, "default", "web-1", true)
	ready := endpointState{addr: "198.18.0.11", ready: true, node: "node-a", zone: "zone-a"}
	waitSlices(t, c, "default", "web", map[string]endpointState{"web-1": ready}, []string{"http/8080/TCP/IPv4"})

	c.StopAPIServer(t)
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := c.Client.CoreV1().Services("default").Get(short, "web", metav1.GetOptions{})
	cancel()
	if err == nil {
		t.Fatal("Get succeeded with the API server stopped")
	}
	t.Logf("with the API server stopped: %v", err)

	start := time.Now()
	c.StartAPIServer(t)
	t.Logf("API server ready again in %v", time.Since(start).Round(time.Millisecond))
	if _, err := c.Client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		t.Fatalf("service after restart: %v", err)
	}
	if _, err := c.Client.CoreV1().Pods("default").Get(ctx, "web-1", metav1.GetOptions{}); err != nil {
		t.Fatalf("pod after restart: %v", err)
	}
	// The controller manager kept running and follows changes again.
	c.CreatePod(t, "default", "web-2", map[string]string{"app": "web"}, "node-a", "198.18.0.12", port)
	c.SetPodReady(t, "default", "web-2", true)
	waitSlices(t, c, "default", "web", map[string]endpointState{
		"web-1": ready,
		"web-2": {addr: "198.18.0.12", ready: true, node: "node-a", zone: "zone-a"},
	}, []string{"http/8080/TCP/IPv4"})
}

func TestPrivilegedClusterDryRun(t *testing.T) {
	c := cluster.Start(t)
	ctx := t.Context()
	services := c.Client.CoreV1().Services("default")
	dryRun := []string{metav1.DryRunAll}

	svc, err := services.Create(ctx, webService("dry"), metav1.CreateOptions{DryRun: dryRun})
	if err != nil {
		t.Fatalf("dry-run create: %v", err)
	}
	if svc.Spec.ClusterIP == "" {
		t.Error("dry-run create: no ClusterIP in the answer")
	}
	apply := corev1ac.Service("applied", "default").WithSpec(corev1ac.ServiceSpec().
		WithSelector(map[string]string{"app": "applied"}).
		WithPorts(corev1ac.ServicePort().WithName("http").WithPort(80).WithTargetPort(intstr.FromInt32(8080))))
	applied, err := services.Apply(ctx, apply, metav1.ApplyOptions{FieldManager: "socklb-e2e", DryRun: dryRun})
	if err != nil {
		t.Fatalf("dry-run server-side apply: %v", err)
	}
	if got := applied.Spec.Ports; len(got) != 1 || got[0].Port != 80 {
		t.Errorf("dry-run apply answered ports %+v", got)
	}
	for _, name := range []string{"dry", "applied"} {
		if _, err := services.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("service %s after dry run: err = %v, want NotFound", name, err)
		}
	}
	// And for real, through the agent's kubeconfig file.
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = c.NS.Dial
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("default").Apply(ctx, apply, metav1.ApplyOptions{FieldManager: "socklb-e2e"}); err != nil {
		t.Fatalf("server-side apply: %v", err)
	}
	if _, err := services.Get(ctx, "applied", metav1.GetOptions{}); err != nil {
		t.Fatalf("service after apply: %v", err)
	}
}

func TestPrivilegedClusterFiles(t *testing.T) {
	c := cluster.Start(t)
	fi, err := os.Stat(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode %v, want 0600", fi.Mode().Perm())
	}
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster].Server; got != c.Server || got != "https://127.0.0.1:6443" {
		t.Errorf("kubeconfig server %q, want %q", got, c.Server)
	}

	// The plain user is authenticated and may do nothing.
	plain, err := clientcmd.BuildConfigFromFlags("", c.WriteKubeconfig(t, cluster.PlainUser, c.PlainToken))
	if err != nil {
		t.Fatal(err)
	}
	plain.Dial = c.NS.Dial
	cs, err := kubernetes.NewForConfig(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("default").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("plain user lists services: err = %v, want Forbidden", err)
	}
}

// TestPrivilegedClusterCleanup checks that a cluster leaves nothing behind:
// no process, no network namespace, no files.
func TestPrivilegedClusterCleanup(t *testing.T) {
	var (
		pids   map[string]int
		netns  string
		dirs   []string
		passed bool
	)
	t.Run("cluster", func(t *testing.T) {
		c := cluster.Start(t)
		pids, netns, dirs = c.PIDs(), c.NS.Path(), []string{c.Dir, filepath.Dir(c.Kubeconfig)}
		if len(pids) != 3 {
			t.Errorf("PIDs() = %v, want etcd, kube-apiserver and kube-controller-manager", pids)
		}
		passed = true
	})
	if !passed {
		t.Fatal("cluster did not start")
	}
	for name, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("%s (pid %d) still exists: %q", name, pid, cmdline)
		}
	}
	if _, err := os.Stat(netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s still exists (%v)", netns, err)
	}
	entries, err := os.ReadDir(sandbox.NetnsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == filepath.Base(netns) {
			t.Errorf("ip netns still lists %s", e.Name())
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory %s still exists (%v)", d, err)
		}
	}
}

package scenarios

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/loader"
)

// TestPrivilegedDualStackService: a RequireDualStack Service gets an IPv4
// and an IPv6 ClusterIP; each reaches the pods over its own family.
func TestPrivilegedDualStackService(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1,2001:2::1", "node-a", web, true)
	e.pod(t, "web-2", "198.18.0.2,2001:2::2", "node-a", web, true)
	require := corev1.IPFamilyPolicyRequireDualStack
	svc := e.service(t, "web", web, func(s *corev1.Service) {
		s.Spec.IPFamilyPolicy = &require
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	})
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("clusterIPs = %v, want one per family", svc.Spec.ClusterIPs)
	}
	for _, ip := range svc.Spec.ClusterIPs {
		e.waitOutcomes(t, a, hostPort(ip, 80), "web-1", "web-2")
	}
	e.c.SetPodReady(t, testNS, "web-1", false)
	for _, ip := range svc.Spec.ClusterIPs {
		e.waitOutcomes(t, a, hostPort(ip, 80), "web-2")
	}
}

// TestPrivilegedNodePortService: a NodePort Service answers local sockets
// on loopback and on the node's addresses at its nodePort.
func TestPrivilegedNodePortService(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	// A node address, on the namespace the agent watches with netlink.
	nodeAddr := netip.MustParseAddr("198.18.200.1")
	if err := e.c.NS.AddAddr(netip.PrefixFrom(nodeAddr, 32)); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, a)
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	e.pod(t, "web-2", "198.18.0.2", "node-a", web, true)
	svc := e.service(t, "web", web, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
	nodePort := int(svc.Spec.Ports[0].NodePort)
	if nodePort == 0 {
		t.Fatal("no nodePort allocated")
	}
	for _, addr := range []string{vip(svc, 80), hostPort("127.0.0.1", nodePort), hostPort(nodeAddr.String(), nodePort)} {
		e.waitOutcomes(t, a, addr, "web-1", "web-2")
	}
	// A node address added later is picked up.
	late := netip.MustParseAddr("198.18.200.2")
	if err := e.c.NS.AddAddr(netip.PrefixFrom(late, 32)); err != nil {
		t.Fatal(err)
	}
	e.waitOutcomes(t, a, hostPort(late.String(), nodePort), "web-1", "web-2")

	rows, features := a.inspect(t)
	for _, fe := range []string{hostPort("127.0.0.1", nodePort), hostPort(late.String(), nodePort)} {
		if r := rows[fe+"/TCP"]; r.Kind != "NodePort" || len(r.Backends) != 2 {
			t.Errorf("inspect shows %s as %+v, want a NodePort frontend with 2 backends", fe, r)
		}
	}
	if r := rows[vip(svc, 80)+"/TCP"]; r.Kind != "ClusterIP" {
		t.Errorf("inspect shows the ClusterIP frontend as %+v", r)
	}
	if len(features) == 0 || !features[loader.FeatSockDestroy] || !features[loader.FeatSkStorage] {
		t.Errorf("inspect's feature report: %v", features)
	}
}

// TestPrivilegedSessionAffinityService: sessionAffinity ClientIP keeps one
// client (a pod, i.e. a network namespace) on one backend and spreads
// distinct clients.
func TestPrivilegedSessionAffinityService(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	e.startAgent(t, a)
	for i := 1; i <= 3; i++ {
		e.pod(t, fmt.Sprintf("web-%d", i), fmt.Sprintf("198.18.0.%d", i), "node-a", web, true)
	}
	timeout := int32(600)
	svc := e.service(t, "web", web, func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	})
	e.waitBackends(t, a, vip(svc, 80)+"/TCP", 3)
	if rows, _ := a.inspect(t); rows[vip(svc, 80)+"/TCP"].Affinity != 600 {
		t.Errorf("inspect shows affinity %+v, want 600 s", rows[vip(svc, 80)+"/TCP"])
	}

	// One client: the cluster's own namespace, 100 connects.
	one := e.spread(t, a, vip(svc, 80), 100)
	if len(one) != 1 {
		t.Errorf("one client's 100 connects went to %v; affinity keeps one backend", one)
	}
	// Distinct clients: namespaces of their own, wired to the pods. Each
	// picks one of 3 backends at random, so 8 clients all land on one with
	// a probability of 3/3^8 (1 in 2187): more clients are added until two
	// backends are seen, up to maxClients (3/3^40, about 2e-19, for a
	// working datapath to fail).
	const minClients, maxClients = 8, 40
	stuck := map[string]int{}
	clients, twoAt := 0, 0
	within(t, a, func() {
		for ; clients < minClients || len(stuck) < 2 && clients < maxClients; clients++ {
			i := clients
			c := sandbox.NewNetns(t)
			if err := sandbox.Wire(c, e.c.NS, netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), netip.MustParsePrefix("198.18.0.0/24")); err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for range 10 {
				name, err := testagent.Ask(c, "tcp4", vip(svc, 80))
				if err != nil {
					t.Fatalf("client %d: %v", i, err)
				}
				got[name]++
			}
			if len(got) != 1 {
				t.Errorf("client %d spread over %v", i, got)
			}
			for name := range got {
				stuck[name]++
			}
			if twoAt == 0 && len(stuck) >= 2 {
				twoAt = i + 1
			}
		}
	})
	t.Logf("%d clients stuck to %v; the first %d of them reached two backends", clients, stuck, twoAt)
	if len(stuck) < 2 {
		t.Errorf("all %d clients got one backend: %v", clients, stuck)
	}
}

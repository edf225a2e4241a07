package tests

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/pkg/lb"
)

// TestPrivilegedNodePortAndExternalIPsFromLocalSockets: a NodePort
// Service is reachable from local sockets on loopback and on a node
// address at its nodePort, and on its externalIP at the service port.
func TestPrivilegedNodePortAndExternalIPsFromLocalSockets(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "pod-1", "198.18.0.1", 8080)
	nodeAddr := netip.MustParseAddr("198.18.0.100")
	if err := d.ns.AddAddr(netip.PrefixFrom(nodeAddr, 32)); err != nil {
		t.Fatal(err)
	}
	port, name := int32(8080), "http"
	state, warnings := lb.Compute(lb.Input{
		Node: lb.NodeInfo{Name: "node-a", Addresses: []netip.Addr{nodeAddr}},
		Services: []*corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "web"},
			Spec: corev1.ServiceSpec{
				Type:        corev1.ServiceTypeNodePort,
				ClusterIP:   vip,
				ClusterIPs:  []string{vip},
				ExternalIPs: []string{"198.18.5.5"},
				Ports:       []corev1.ServicePort{{Name: name, Port: 80, NodePort: 30080, Protocol: corev1.ProtocolTCP}},
			},
		}},
		EndpointSlices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "test", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"198.18.0.1"}}},
		}},
	})
	if len(warnings) != 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	if _, err := d.rec.Apply(state); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{vip + ":80", "127.0.0.1:30080", "198.18.0.100:30080", "198.18.5.5:80"} {
		got, err := d.ask("tcp4", addr)
		if err != nil || got != "pod-1" {
			t.Errorf("connect to %s: %q, %v; want pod-1", addr, got, err)
		}
	}
	// The node address itself, on another port, is not a frontend.
	if _, err := d.ask("tcp4", "198.18.0.100:30081"); err == nil {
		t.Error("198.18.0.100:30081 answered; nothing listens there")
	}
}

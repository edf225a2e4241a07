package reconciler

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// benchInput is n Services with a slice of ten endpoints each, shaped
// like the ones tests/bench loads.
func benchInput(n int) lb.Input {
	var in lb.Input
	port, name := int32(8080), "http"
	for i := range n {
		svcName := fmt.Sprintf("svc-%06d", i)
		ip := fmt.Sprintf("198.19.%d.%d", i/250, i%250+1)
		in.Services = append(in.Services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: svcName},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: name, Port: 80, Protocol: corev1.ProtocolTCP}}},
		})
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: svcName + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		}
		for e := 1; e <= 10; e++ {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("198.18.0.%d", e)}})
		}
		in.EndpointSlices = append(in.EndpointSlices, sl)
	}
	return in
}

// BenchmarkSyncOneChange is the agent's work for one endpoint change at
// 10 000 Services: the model over everything, then the diff (one write).
func BenchmarkSyncOneChange(b *testing.B) {
	in := benchInput(10000)
	r := New(maps.NewFake(), nil)
	st, _ := lb.Compute(in)
	if _, err := r.Apply(st); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		in.EndpointSlices[0].Endpoints[0].Addresses[0] = fmt.Sprintf("198.18.1.%d", i%2)
		st, _ := lb.Compute(in)
		if _, err := r.Apply(st); err != nil {
			b.Fatal(err)
		}
	}
}

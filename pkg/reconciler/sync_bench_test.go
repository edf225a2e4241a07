package reconciler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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
		if i >= 250*256 {
			// Past 198.19.255.250 (64 000 services) continue in 198.20/16:
			// these only go into fake maps, nothing is ever dialled.
			j := i - 250*256
			ip = fmt.Sprintf("198.20.%d.%d", j/250, j%250+1)
		}
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

// BenchmarkSyncOneChange is the agent's work for one endpoint change: the
// model, then the diff and its one write. As from an informer, the changed
// slice arrives as a new object (a modified deep copy). With tracked=false
// it comes in a new list of every object (a source without a change
// tracker, the file source); with tracked=true the model is handed the
// changed Service's key and objects (the Kubernetes source) and the
// reconciler the changed frontends. Besides the mean it reports the 99th
// percentile of the syncs, which the goal is stated in.
func BenchmarkSyncOneChange(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, tracked := range []bool{false, true} {
			b.Run(fmt.Sprintf("services=%d/tracked=%v", n, tracked), func(b *testing.B) {
				benchSyncOneChange(b, n, tracked)
			})
		}
	}
}

func benchSyncOneChange(b *testing.B, n int, tracked bool) {
	in := benchInput(n)
	// Maps sized for n, as an operator sizes them: the compiled defaults
	// hold 524 288 service entries, not 100 000 frontends of ten slots
	// each, and a benchmark over capacity measures the retries of what
	// does not fit.
	entries := 2 * n * 12
	r := New(maps.NewFakeWithCapacity(maps.Capacity{Services: entries, Members: entries,
		Counters: 2 * n, Names: 2 * n, VIPs: 2 * n}), nil)
	c := lb.NewComputer()
	st, _ := c.Compute(in)
	if _, err := r.Apply(st); err != nil {
		b.Fatal(err)
	}
	key := types.NamespacedName{Namespace: "bench", Name: in.Services[0].Name}
	took := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		sl := in.EndpointSlices[0].DeepCopy()
		sl.Endpoints[0].Addresses[0] = fmt.Sprintf("198.18.1.%d", i%2)
		var stats Stats
		var err error
		if tracked {
			in.EndpointSlices[0] = sl // the cache holds the new object
			st, _, ok := c.ComputeChanged(lb.Input{}, []types.NamespacedName{key},
				func(types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
					return in.Services[:1], in.EndpointSlices[:1]
				})
			if !ok {
				b.Fatal("ComputeChanged refused")
			}
			changed, all := c.Changed()
			stats, err = r.ApplyChanged(st, changed, all)
		} else {
			next := in
			next.EndpointSlices = append([]*discoveryv1.EndpointSlice{sl}, in.EndpointSlices[1:]...)
			in = next
			st, _ := c.Compute(in)
			stats, err = r.Apply(st)
		}
		if err != nil {
			b.Fatal(err)
		}
		if stats.Published != 1 {
			b.Fatalf("sync %d published %d frontends, want 1", i, stats.Published)
		}
		took = append(took, time.Since(start))
	}
	// The goal is about the slow syncs, not the average one.
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)*99/100].Nanoseconds()), "p99-ns/op")
}

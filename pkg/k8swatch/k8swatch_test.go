package k8swatch

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"
)

func service(name string, lbls map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: lbls},
		Spec:       corev1.ServiceSpec{ClusterIP: "198.19.0.1", Ports: []corev1.ServicePort{{Port: 80}}},
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func names(in []*corev1.Service) []string {
	var out []string
	for _, s := range in {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

func TestSourceSyncsFiltersAndPokes(t *testing.T) {
	client := fake.NewClientset(
		service("web", map[string]string{"env": "prod"}),
		service("dev", map[string]string{"env": "dev"}),
		service("theirs", map[string]string{"env": "prod", labelServiceProxyName: "other"}),
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1"}, AddressType: discoveryv1.AddressTypeIPv4},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{labelZone: "zone-1"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b", Labels: map[string]string{labelZone: "zone-2"}}},
	)
	sel, err := labels.Parse("env in (prod, qa)")
	if err != nil {
		t.Fatal(err)
	}
	var pokes atomic.Int32
	src, err := New(Options{Client: client, NodeName: "node-a", ServiceSelector: sel, OnChange: func() { pokes.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if src.HasSynced() {
		t.Fatal("synced before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	eventually(t, "sync", src.HasSynced)
	in := src.Input()
	if got := names(in.Services); !slices.Equal(got, []string{"web"}) {
		t.Errorf("services = %v, want only web (selector and service-proxy-name applied server-side)", got)
	}
	if len(in.EndpointSlices) != 1 {
		t.Errorf("slices = %d, want 1", len(in.EndpointSlices))
	}
	if in.Node.Name != "node-a" || in.Node.Zone != "zone-1" {
		t.Errorf("node = %+v, want node-a in zone-1", in.Node)
	}

	before := pokes.Load()
	if _, err := client.CoreV1().Services("ns").Create(ctx, service("api", map[string]string{"env": "qa"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new service", func() bool { return len(src.Input().Services) == 2 })
	if pokes.Load() == before {
		t.Error("a new service did not poke the syncer")
	}
	n, _ := client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	n.Labels[labelZone] = "zone-3"
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node's new zone", func() bool { return src.Input().Node.Zone == "zone-3" })
}

func TestServerSideSelector(t *testing.T) {
	for _, tc := range []struct {
		user string
		want string
	}{
		{"", "!service.kubernetes.io/service-proxy-name"},
		{"env in (prod,qa),tier notin (frontend)", "env in (prod,qa),!service.kubernetes.io/service-proxy-name,tier notin (frontend)"},
	} {
		var sel labels.Selector
		if tc.user != "" {
			var err error
			if sel, err = labels.Parse(tc.user); err != nil {
				t.Fatal(err)
			}
		}
		got, err := serverSideSelector(sel)
		if err != nil || got != tc.want {
			t.Errorf("serverSideSelector(%q) = %q, %v; want %q", tc.user, got, err, tc.want)
		}
	}
}

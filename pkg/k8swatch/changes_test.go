package k8swatch

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/reconciler"
)

// The syncer computes only what the source says changed.
var _ reconciler.ChangeTracker = (*Source)(nil)

func sliceFor(name, service string, addrs ...string) *discoveryv1.EndpointSlice {
	port := int32(8080)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: &port}},
	}
	if service == "" {
		s.Labels = nil
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

func keyNames(keys []types.NamespacedName) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// TestChangesFollowTheAPIServer changes objects through a client and
// checks after each change that Changed names the Services it touched (a
// slice's old and new one), that Objects reads the caches, and that a
// Computer fed with those alone computes what Compute does from the whole
// cache.
func TestChangesFollowTheAPIServer(t *testing.T) {
	web := service("web", nil)
	api := service("api", nil)
	api.Spec.ClusterIP = "198.19.0.2"
	client := fake.NewClientset(web, api, sliceFor("web-1", "web", "10.0.0.1"))
	src, err := New(Options{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "sync", src.HasSynced)

	comp := lb.NewComputer()
	comp.Compute(src.Input())
	eventually(t, "the initial list's changes", func() bool {
		keys, _ := src.Changed()
		return len(keys) == 0
	})
	sliceAPI := client.DiscoveryV1().EndpointSlices("ns")
	services := client.CoreV1().Services("ns")
	for _, step := range []struct {
		what   string
		change func() error
		want   []string
	}{
		{"a slice's endpoints", func() error {
			_, err := sliceAPI.Update(ctx, sliceFor("web-1", "web", "10.0.0.2"), metav1.UpdateOptions{})
			return err
		}, []string{"ns/web"}},
		{"a slice moves", func() error {
			_, err := sliceAPI.Update(ctx, sliceFor("web-1", "api", "10.0.0.2"), metav1.UpdateOptions{})
			return err
		}, []string{"ns/api", "ns/web"}},
		{"a new slice", func() error {
			_, err := sliceAPI.Create(ctx, sliceFor("web-2", "web", "10.0.0.3"), metav1.CreateOptions{})
			return err
		}, []string{"ns/web"}},
		{"a slice loses its label", func() error {
			_, err := sliceAPI.Update(ctx, sliceFor("web-2", "", "10.0.0.3"), metav1.UpdateOptions{})
			return err
		}, []string{"ns/web"}},
		{"a slice is deleted", func() error {
			return sliceAPI.Delete(ctx, "web-1", metav1.DeleteOptions{})
		}, []string{"ns/api"}},
		{"a service changes", func() error {
			s := service("web", nil)
			s.Spec.Ports[0].Port = 81
			_, err := services.Update(ctx, s, metav1.UpdateOptions{})
			return err
		}, []string{"ns/web"}},
		{"a service is deleted", func() error {
			return services.Delete(ctx, "api", metav1.DeleteOptions{})
		}, []string{"ns/api"}},
	} {
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		var got []types.NamespacedName
		eventually(t, step.what, func() bool {
			keys, all := src.Changed()
			if all {
				t.Fatalf("%s: the handlers lost count", step.what)
			}
			got = append(got, keys...)
			return reflect.DeepEqual(keyNames(dedup(got)), step.want)
		})
		st, warns, ok := comp.ComputeChanged(lb.Input{}, got, src.Objects)
		if !ok {
			t.Fatalf("%s: ComputeChanged refused", step.what)
		}
		want, wantWarns := lb.Compute(src.Input())
		if !reflect.DeepEqual(st, want) || !reflect.DeepEqual(warns, wantWarns) {
			t.Fatalf("%s: computed from the changes\n  %v %v\nfrom the whole cache\n  %v %v", step.what, st, warns, want, wantWarns)
		}
	}
}

func dedup(keys []types.NamespacedName) []types.NamespacedName {
	seen := map[types.NamespacedName]bool{}
	var out []types.NamespacedName
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// TestChangesBounded: past maxPending keys the handlers stop counting and
// say so; an object they cannot read, or a resync, counts as expected.
func TestChangesBounded(t *testing.T) {
	var c changes
	pokes := 0
	h := sliceHandler(&c, func() { pokes++ })
	for i := range maxPending + 1 {
		h.OnAdd(sliceFor(fmt.Sprintf("s-%d", i), fmt.Sprintf("svc-%d", i)), false)
	}
	if keys, all := c.take(); !all || len(keys) != 0 {
		t.Fatalf("past the bound: %d keys, all=%v; want none and all", len(keys), all)
	}
	if keys, all := c.take(); all || len(keys) != 0 {
		t.Fatalf("take did not forget: %d keys, all=%v", len(keys), all)
	}

	s := sliceFor("a", "web")
	h.OnUpdate(s, s) // a resync
	if keys, all := c.take(); all || len(keys) != 0 {
		t.Fatalf("a resync recorded %v, all=%v", keys, all)
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: s})
	if keys, _ := c.take(); !reflect.DeepEqual(keyNames(keys), []string{"ns/web"}) {
		t.Fatalf("a missed delete recorded %v, want ns/web", keys)
	}
	serviceHandler(&c, func() {}).OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/x", Obj: "garbage"})
	if _, all := c.take(); !all {
		t.Fatal("an object of the wrong type did not make the next sync read everything")
	}
	if pokes != maxPending+2 {
		t.Fatalf("%d pokes, want one per change (%d)", pokes, maxPending+2)
	}
}

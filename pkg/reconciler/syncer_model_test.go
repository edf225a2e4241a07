package reconciler

import (
	"context"
	"fmt"
	"slices"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

func sliceOf(name string, addrs ...string) *discoveryv1.EndpointSlice {
	port := int32(8080)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: &port}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

// TestSyncerFollowsChangedObjects: the Syncer's model remembers objects
// between syncs; a changed object (a new one, as from an informer) and a
// deleted one must still reach the maps.
func TestSyncerFollowsChangedObjects(t *testing.T) {
	f := maps.NewFake()
	src := &fakeSource{}
	s := NewSyncer(New(f, nil), []Source{src}, SyncerOptions{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	backends := func() []string {
		bes, err := f.Backends()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range bes {
			out = append(out, b.String())
		}
		slices.Sort(out)
		return out
	}
	svcs := oneService().Services
	for _, step := range []struct {
		slices []*discoveryv1.EndpointSlice
		want   []string
	}{
		{[]*discoveryv1.EndpointSlice{sliceOf("web-a", "10.0.0.1")}, []string{"10.0.0.1:8080/TCP"}},
		{[]*discoveryv1.EndpointSlice{sliceOf("web-a", "10.0.0.2")}, []string{"10.0.0.2:8080/TCP"}},
		{[]*discoveryv1.EndpointSlice{sliceOf("web-a", "10.0.0.2"), sliceOf("web-b", "10.0.0.3")}, []string{"10.0.0.2:8080/TCP", "10.0.0.3:8080/TCP"}},
		{nil, nil},
	} {
		src.set(lb.Input{Services: svcs, EndpointSlices: step.slices}, true)
		s.Trigger()
		waitFor(t, fmt.Sprintf("backends %v", step.want), func() bool { return slices.Equal(backends(), step.want) })
	}
}

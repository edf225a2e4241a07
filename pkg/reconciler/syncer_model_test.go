package reconciler

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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

// fakeTracker is a ChangeTracker over one Service's objects; it counts
// the full reads.
type fakeTracker struct {
	fakeSource
	keys   []types.NamespacedName
	all    bool
	inputs atomic.Int32
}

func (s *fakeTracker) Input() lb.Input {
	s.inputs.Add(1)
	return s.fakeSource.Input()
}

func (s *fakeTracker) Changed() ([]types.NamespacedName, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys, all := s.keys, s.all
	s.keys, s.all = nil, false
	return keys, all
}

func (s *fakeTracker) Objects(key types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var svcs []*corev1.Service
	for _, sv := range s.in.Services {
		if sv.Namespace == key.Namespace && sv.Name == key.Name {
			svcs = append(svcs, sv)
		}
	}
	var sls []*discoveryv1.EndpointSlice
	for _, sl := range s.in.EndpointSlices {
		if sl.Namespace == key.Namespace && sl.Labels[discoveryv1.LabelServiceName] == key.Name {
			sls = append(sls, sl)
		}
	}
	return svcs, sls
}

func (s *fakeTracker) Node() lb.NodeInfo { return s.fakeSource.Input().Node }

// change replaces the objects and records the key.
func (s *fakeTracker) change(in lb.Input, key types.NamespacedName, all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.in = in
	s.keys = append(s.keys, key)
	s.all = s.all || all
}

// TestSyncerComputesOnlyTrackedChanges: with a change tracker a change
// reaches the maps without a full read of the source; a reconciliation
// that is due, or a tracker that lost count, reads everything.
func TestSyncerComputesOnlyTrackedChanges(t *testing.T) {
	f := maps.NewFake()
	src := &fakeTracker{}
	var published atomic.Int32
	s := NewSyncer(New(f, nil), []Source{src}, SyncerOptions{
		OnSync: func(_ time.Duration, st Stats, _ error) { published.Store(int32(st.Published)) },
	}, nil)
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	svcs := oneService().Services
	src.set(lb.Input{Services: svcs, EndpointSlices: []*discoveryv1.EndpointSlice{sliceOf("web-a", "10.0.0.1")}}, true)
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
	waitFor(t, "the first sync", s.HasSynced)
	reads := src.inputs.Load()
	for i, step := range []struct {
		all, due bool
		full     bool // a full read is expected
	}{{}, {}, {all: true, full: true}, {}, {due: true, full: true}, {}} {
		addr := fmt.Sprintf("10.0.0.%d", i+2)
		src.change(lb.Input{Services: svcs, EndpointSlices: []*discoveryv1.EndpointSlice{sliceOf("web-a", addr)}}, web, step.all)
		if step.due {
			s.reconcileDue.Store(true)
		}
		s.Trigger()
		want := []string{addr + ":8080/TCP"}
		waitFor(t, fmt.Sprintf("step %d: backends %v", i, want), func() bool { return slices.Equal(backends(), want) })
		n := src.inputs.Load()
		if read := n > reads; read != step.full {
			t.Fatalf("step %d: the source was read in full: %v, want %v", i, read, step.full)
		}
		if p := published.Load(); p != 1 {
			t.Fatalf("step %d: published %d frontends, want 1", i, p)
		}
		reads = n
	}
}

package lb

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// cacheEvolution is an informer cache that changes as the API server
// changes it: one object per namespace/name, a change is a new object, and
// each change names the Service keys it touched, as the Kubernetes
// source's handlers record them (a slice's old and new owner).
type cacheEvolution struct {
	ev     *evolution
	svcs   map[types.NamespacedName]*corev1.Service
	slices map[types.NamespacedName]*discoveryv1.EndpointSlice
	keys   []types.NamespacedName
}

func (c *cacheEvolution) input() Input {
	in := Input{Node: c.ev.in.Node, ServiceSelector: c.ev.in.ServiceSelector, Defaults: c.ev.in.Defaults}
	for _, s := range c.svcs {
		in.Services = append(in.Services, s)
	}
	for _, s := range c.slices {
		in.EndpointSlices = append(in.EndpointSlices, s)
	}
	// Map order is random: the result must not depend on it.
	return in
}

func (c *cacheEvolution) objects(key types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	var svcs []*corev1.Service
	if s := c.svcs[key]; s != nil {
		svcs = append(svcs, s)
	}
	var sls []*discoveryv1.EndpointSlice
	for _, s := range c.slices {
		if s.Namespace == key.Namespace && s.Labels[discoveryv1.LabelServiceName] == key.Name {
			sls = append(sls, s)
		}
	}
	return svcs, sls
}

func (c *cacheEvolution) touchSlice(s *discoveryv1.EndpointSlice) {
	if s == nil {
		return
	}
	if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
		c.keys = append(c.keys, types.NamespacedName{Namespace: s.Namespace, Name: name})
	}
}

func (c *cacheEvolution) putService(s *corev1.Service) {
	key := serviceName(s)
	c.svcs[key] = s
	c.keys = append(c.keys, key)
}

func (c *cacheEvolution) putSlice(s *discoveryv1.EndpointSlice) {
	key := sliceName(s)
	c.touchSlice(c.slices[key])
	c.slices[key] = s
	c.touchSlice(s)
}

func pickOne[K comparable, V any](rng *rand.Rand, m map[K]V) (K, V, bool) {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	var zero V
	if len(keys) == 0 {
		var k K
		return k, zero, false
	}
	// Map order is random, but the test's must be reproducible.
	slices.SortFunc(keys, func(a, b K) int { return compareKeys(a, b) })
	k := keys[rng.IntN(len(keys))]
	return k, m[k], true
}

func compareKeys[K comparable](a, b K) int {
	sa, sb := fmt.Sprint(a), fmt.Sprint(b)
	switch {
	case sa < sb:
		return -1
	case sa > sb:
		return 1
	}
	return 0
}

// step makes one random change.
func (c *cacheEvolution) step() {
	ev, r := c.ev, c.ev.rng
	switch r.IntN(12) {
	case 0, 1:
		c.putService(ev.plausibleService())
	case 2:
		if k, _, ok := pickOne(r, c.svcs); ok {
			delete(c.svcs, k)
			c.keys = append(c.keys, k)
		}
	case 3:
		if _, s, ok := pickOne(r, c.svcs); ok {
			n := s.DeepCopy()
			if len(n.Spec.Ports) > 0 {
				n.Spec.Ports[0].Port = oneOf(r, int32(80), 8080, 53)
			}
			if r.IntN(2) == 0 {
				n.Labels = map[string]string{"tier": oneOf(r, "web", "db")}
			}
			c.putService(n)
		}
	case 4, 5:
		c.putSlice(ev.plausibleSlice())
	case 6:
		if k, s, ok := pickOne(r, c.slices); ok {
			delete(c.slices, k)
			c.touchSlice(s)
		}
	case 7, 8:
		if _, s, ok := pickOne(r, c.slices); ok {
			n := s.DeepCopy()
			if len(n.Endpoints) > 0 && r.IntN(2) == 0 {
				n.Endpoints = slices.Delete(n.Endpoints, 0, 1)
			} else {
				n.Endpoints = append(n.Endpoints, ready(oneOf(r, plausibleEPs...)))
			}
			c.putSlice(n)
		}
	case 9:
		// The slice moves to another Service of its namespace, or to none.
		if _, s, ok := pickOne(r, c.slices); ok {
			n := s.DeepCopy()
			n.Labels = nil
			if r.IntN(4) > 0 {
				n.Labels = map[string]string{discoveryv1.LabelServiceName: oneOf(r, plausibleNames...)}
			}
			c.putSlice(n)
		}
	case 10:
		if r.IntN(2) == 0 {
			ev.in.Node = ev.fresh().Node
		} else {
			ev.in.ServiceSelector = ev.fresh().ServiceSelector
		}
	case 11:
		// Nothing changed, or a key is named twice.
		if k, _, ok := pickOne(r, c.svcs); ok && r.IntN(2) == 0 {
			c.keys = append(c.keys, k, k)
		}
	}
}

// TestComputeChangedMatchesCompute drives a Computer from an evolving
// cache through ComputeChanged, with the keys the handlers would record,
// and a full Compute now and then (as the periodic reconciliation does):
// each result must equal Compute's of the whole cache, and Changed must
// name every frontend whose Service is not the previous result's.
func TestComputeChangedMatchesCompute(t *testing.T) {
	incremental, refused, partial := 0, 0, 0
	for seed := range uint64(60) {
		ev := &evolution{rng: rand.New(rand.NewPCG(seed, 2))}
		ev.in = ev.fresh()
		ev.in.Services, ev.in.EndpointSlices = nil, nil
		c := &cacheEvolution{ev: ev, svcs: map[types.NamespacedName]*corev1.Service{},
			slices: map[types.NamespacedName]*discoveryv1.EndpointSlice{}}
		for range 6 {
			c.step()
		}
		comp := NewComputer()
		prev, _ := comp.Compute(c.input())
		prevServices := slices.Clone(prev.Services)
		c.keys = nil
		for step := range 200 {
			c.step()
			var got State
			var gotWarns []Warning
			ok := false
			if ev.rng.IntN(10) > 0 {
				settings := Input{Node: ev.in.Node, ServiceSelector: ev.in.ServiceSelector}
				same := comp.sameSettingsOf(settings)
				got, gotWarns, ok = comp.ComputeChanged(settings, c.keys, c.objects)
				if ok != same {
					t.Fatalf("seed %d step %d: ComputeChanged returned %v with the settings the same: %v", seed, step, ok, same)
				}
				if ok {
					incremental++
				} else {
					refused++
				}
			}
			if !ok {
				got, gotWarns = comp.Compute(c.input())
			}
			c.keys = nil
			want, wantWarns := Compute(c.input())
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
				t.Fatalf("seed %d step %d: got\n  %q\n  %q\nwant\n  %q\n  %q", seed, step, render(got), gotWarns, render(want), wantWarns)
			}
			changed, all := comp.Changed()
			if !all {
				partial++
				checkChanged(t, fmt.Sprintf("seed %d step %d", seed, step), prevServices, got.Services, changed)
			}
			prevServices = slices.Clone(got.Services)
		}
	}
	t.Logf("%d incremental results, %d refused, %d with a list of changes", incremental, refused, partial)
	if incremental == 0 || refused == 0 || partial == 0 {
		t.Errorf("too weak: %d incremental results, %d refused, %d with a list of changes", incremental, refused, partial)
	}
}

// sameSettingsOf is sameSettings for an Input, for the test.
func (c *Computer) sameSettingsOf(in Input) bool {
	return c.sameSettings(NodeInfo{Name: in.Node.Name, Zone: in.Node.Zone}, nodePortAddrs(in.Node.Addresses), in)
}

// checkChanged fails unless every frontend of before or after that is
// not in changed has the same Service in both.
func checkChanged(t *testing.T, what string, before, after []Service, changed []Frontend) {
	t.Helper()
	if !slices.IsSortedFunc(changed, Frontend.Compare) {
		t.Fatalf("%s: changed is not sorted: %v", what, changed)
	}
	index := func(list []Service) map[Frontend]Service {
		m := make(map[Frontend]Service, len(list))
		for _, s := range list {
			m[s.Frontend] = s
		}
		return m
	}
	b, a := index(before), index(after)
	for fe := range merged(b, a) {
		if _, listed := slices.BinarySearchFunc(changed, fe, Frontend.Compare); listed {
			continue
		}
		sb, inB := b[fe]
		sa, inA := a[fe]
		if inA != inB || !reflect.DeepEqual(sa, sb) {
			t.Fatalf("%s: %v changed (%v → %v) but is not in Changed %v", what, fe, sb, sa, changed)
		}
	}
}

func merged(a, b map[Frontend]Service) map[Frontend]bool {
	m := make(map[Frontend]bool, len(a)+len(b))
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

package lb

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// evolution changes an Input the way sources do: objects are never
// modified; a change is a new object (often a modified deep copy) in a new
// list.
type evolution struct {
	rng *rand.Rand
	in  Input
	log []string // what each step did, to explain a failure
}

// fresh returns a few random objects: mostly plausible ones from small
// sets of names and addresses, so that services share slices and collide
// on frontends; sometimes the mostly broken ones FuzzCompute builds.
func (ev *evolution) fresh() Input {
	if ev.rng.IntN(4) == 0 {
		data := make([]byte, 64+ev.rng.IntN(192))
		for i := range data {
			data[i] = byte(ev.rng.UintN(256))
		}
		b := fuzzBytes(data)
		return fuzzInput(&b)
	}
	var in Input
	in.Node = NodeInfo{Name: oneOf(ev.rng, "n1", "n2", ""), Zone: oneOf(ev.rng, "z1", "z2", "")}
	for range ev.rng.IntN(3) {
		in.Node.Addresses = append(in.Node.Addresses, netip.MustParseAddr(oneOf(ev.rng, "192.168.1.10", "10.96.0.1", "fd00:1::10")))
	}
	if ev.rng.IntN(3) == 0 {
		in.ServiceSelector = labels.SelectorFromSet(labels.Set{"tier": oneOf(ev.rng, "web", "db")})
	}
	for range 1 + ev.rng.IntN(3) {
		in.Services = append(in.Services, ev.plausibleService())
	}
	for range 1 + ev.rng.IntN(4) {
		in.EndpointSlices = append(in.EndpointSlices, ev.plausibleSlice())
	}
	return in
}

func oneOf[T any](rng *rand.Rand, options ...T) T { return options[rng.IntN(len(options))] }

var (
	plausibleNS    = []string{"a", "b"}
	plausibleNames = []string{"s0", "s1", "s2", "s3", "s4"}
	plausibleVIPs  = []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "192.0.2.1"}
	plausibleVIP6  = []string{"fd00:96::1", "fd00:96::2"}
	plausiblePorts = []corev1.ServicePort{
		sport("http", corev1.ProtocolTCP, 80), sport("https", corev1.ProtocolTCP, 443),
		sport("dns", corev1.ProtocolUDP, 53), sport("", corev1.ProtocolTCP, 80),
	}
	plausibleEPs  = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}
	plausibleEP6s = []string{"fd00::1", "fd00::2"}
)

func (ev *evolution) plausibleService() *corev1.Service {
	r := ev.rng
	cips := []string{oneOf(r, plausibleVIPs...)}
	if r.IntN(4) == 0 {
		cips = append(cips, oneOf(r, plausibleVIP6...))
	}
	s := svc(oneOf(r, plausibleNames...), cips)
	s.Namespace = oneOf(r, plausibleNS...)
	for range 1 + r.IntN(2) {
		p := oneOf(r, plausiblePorts...)
		if !slices.ContainsFunc(s.Spec.Ports, func(q corev1.ServicePort) bool { return q.Name == p.Name }) {
			s.Spec.Ports = append(s.Spec.Ports, p)
		}
	}
	var mods []func(*corev1.Service)
	if r.IntN(3) == 0 {
		mods = append(mods, withLabels("tier", oneOf(r, "web", "db")))
	}
	switch r.IntN(5) {
	case 0:
		np := make([]int32, len(s.Spec.Ports))
		for i := range np {
			np[i] = 30000 + int32(r.IntN(3))
		}
		mods = append(mods, nodePorts(np...))
	case 1:
		mods = append(mods, loadBalancer(nil, oneOf(r, "192.0.2.1", "198.51.100.1", "10.96.0.2")))
	case 2:
		mods = append(mods, externalIPs(oneOf(r, "192.0.2.1", "10.96.0.3", "fd00:96::1")))
	}
	if r.IntN(4) == 0 {
		mods = append(mods, localPolicy)
	}
	if r.IntN(4) == 0 {
		mods = append(mods, externalLocal)
	}
	if r.IntN(4) == 0 {
		mods = append(mods, clientIP(nil))
	}
	if r.IntN(3) > 0 {
		// Few distinct times, so that contested frontends often have
		// equal ones, and name order decides.
		mods = append(mods, createdAt(oneOf(r, fuzzCreated[1:]...)))
	}
	return mod(s, with(mods...))
}

func (ev *evolution) plausibleSlice() *discoveryv1.EndpointSlice {
	r := ev.rng
	name, owner := fmt.Sprintf("sl-%d", r.IntN(1000)), oneOf(r, plausibleNames...)
	ports := eports(eport("http", corev1.ProtocolTCP, oneOf(r, int32(8080), 8081)), eport("dns", corev1.ProtocolUDP, 5353),
		eport("", corev1.ProtocolTCP, 8080))
	var eps []discoveryv1.Endpoint
	v6 := r.IntN(4) == 0
	for range r.IntN(4) {
		addr := oneOf(r, plausibleEPs...)
		if v6 {
			addr = oneOf(r, plausibleEP6s...)
		}
		e := oneOf(r, ready, notReady, terminating)(addr)
		if r.IntN(2) == 0 {
			e = on(oneOf(r, "n1", "n2"), e)
		}
		if r.IntN(3) == 0 {
			e = forZones(e, oneOf(r, "z1", "z2"))
		}
		if r.IntN(4) == 0 {
			e = forNodes(e, oneOf(r, "n1", "n2"))
		}
		eps = append(eps, e)
	}
	at := discoveryv1.AddressTypeIPv4
	if v6 {
		at = discoveryv1.AddressTypeIPv6
	}
	s := eslice(name, owner, at, ports, eps...)
	s.Namespace = oneOf(r, plausibleNS...)
	return s
}

func (ev *evolution) service() (int, *corev1.Service) {
	if len(ev.in.Services) == 0 {
		return -1, nil
	}
	i := ev.rng.IntN(len(ev.in.Services))
	return i, ev.in.Services[i]
}

func (ev *evolution) slice() (int, *discoveryv1.EndpointSlice) {
	if len(ev.in.EndpointSlices) == 0 {
		return -1, nil
	}
	i := ev.rng.IntN(len(ev.in.EndpointSlices))
	return i, ev.in.EndpointSlices[i]
}

// step makes one random change and returns the new Input.
func (ev *evolution) step() Input {
	in := ev.in
	in.Services, in.EndpointSlices = slices.Clone(in.Services), slices.Clone(in.EndpointSlices)
	ev.in = in
	do := func(format string, args ...any) { ev.log = append(ev.log, fmt.Sprintf(format, args...)) }
	switch op := ev.rng.IntN(17); op {
	case 0:
		f := ev.fresh()
		ev.in.Services = append(ev.in.Services, f.Services...)
		do("add %d services", len(f.Services))
	case 1:
		if i, s := ev.service(); i >= 0 {
			ev.in.Services = slices.Delete(ev.in.Services, i, i+1)
			do("remove service %d %v", i, s != nil)
		}
	case 2:
		// The same name with other content.
		if i, s := ev.service(); s != nil {
			for _, n := range ev.fresh().Services {
				if n != nil {
					n.Namespace, n.Name = s.Namespace, s.Name
					ev.in.Services[i] = n
					do("replace service %s/%s", s.Namespace, s.Name)
					break
				}
			}
		}
	case 3:
		// An update that changes nothing: a new object all the same.
		if i, s := ev.service(); s != nil {
			ev.in.Services[i] = s.DeepCopy()
			do("copy service %s/%s", s.Namespace, s.Name)
		}
	case 4:
		if i, s := ev.service(); s != nil {
			n := s.DeepCopy()
			switch ev.rng.IntN(5) {
			case 0:
				n.Labels = map[string]string{"tier": []string{"web", "db"}[ev.rng.IntN(2)]}
			case 1:
				if len(n.Spec.Ports) > 0 {
					n.Spec.Ports[0].Port = []int32{80, 8080, 53}[ev.rng.IntN(3)]
				}
			case 2:
				n.Spec.ClusterIPs = []string{fuzzIPs[ev.rng.IntN(len(fuzzIPs))]}
			case 3:
				n.Spec.Type = fuzzTypes[ev.rng.IntN(len(fuzzTypes))]
			case 4:
				// Not a change the API server allows, but a file may.
				n.CreationTimestamp = metav1.NewTime(oneOf(ev.rng, fuzzCreated...))
			}
			ev.in.Services[i] = n
			do("tweak service %s/%s", s.Namespace, s.Name)
		}
	case 5:
		f := ev.fresh()
		ev.in.EndpointSlices = append(ev.in.EndpointSlices, f.EndpointSlices...)
		do("add %d slices", len(f.EndpointSlices))
	case 6:
		if i, s := ev.slice(); i >= 0 {
			ev.in.EndpointSlices = slices.Delete(ev.in.EndpointSlices, i, i+1)
			do("remove slice %d %v", i, s != nil)
		}
	case 7:
		if i, s := ev.slice(); s != nil {
			n := s.DeepCopy()
			if len(n.Endpoints) > 0 {
				e := &n.Endpoints[ev.rng.IntN(len(n.Endpoints))]
				switch ev.rng.IntN(3) {
				case 0:
					e.Addresses = []string{fuzzIPs[ev.rng.IntN(len(fuzzIPs))]}
				case 1:
					e.Conditions.Ready = ptr(ev.rng.IntN(2) == 0)
				case 2:
					e.NodeName = ptr(fuzzNodes[ev.rng.IntN(len(fuzzNodes))])
				}
			} else {
				n.Endpoints = append(n.Endpoints, ready(fuzzIPs[ev.rng.IntN(len(fuzzIPs))]))
			}
			ev.in.EndpointSlices[i] = n
			do("tweak slice %s/%s", s.Namespace, s.Name)
		}
	case 8:
		// The slice moves to another service (or to none).
		_, to := ev.service()
		if i, s := ev.slice(); s != nil {
			n := s.DeepCopy()
			n.Labels = nil
			if to != nil {
				n.Namespace = to.Namespace
				n.Labels = map[string]string{discoveryv1.LabelServiceName: to.Name}
			}
			ev.in.EndpointSlices[i] = n
			do("move slice %s/%s", s.Namespace, s.Name)
		}
	case 9:
		if _, s := ev.service(); s != nil {
			ev.in.Services = append(ev.in.Services, s)
			do("list service %s/%s twice", s.Namespace, s.Name)
		}
	case 10:
		if _, s := ev.slice(); s != nil {
			ev.in.EndpointSlices = append(ev.in.EndpointSlices, s)
			do("list slice %s/%s twice", s.Namespace, s.Name)
		}
	case 11:
		ev.in.Services = append(ev.in.Services, nil)
		ev.in.EndpointSlices = append(ev.in.EndpointSlices, nil)
		do("add nils")
	case 12:
		ev.rng.Shuffle(len(ev.in.Services), func(a, b int) {
			ev.in.Services[a], ev.in.Services[b] = ev.in.Services[b], ev.in.Services[a]
		})
		ev.rng.Shuffle(len(ev.in.EndpointSlices), func(a, b int) {
			ev.in.EndpointSlices[a], ev.in.EndpointSlices[b] = ev.in.EndpointSlices[b], ev.in.EndpointSlices[a]
		})
		do("shuffle")
	case 13:
		f := ev.fresh()
		ev.in.Node = f.Node
		do("node %+v", f.Node)
	case 14:
		// The same node addresses in another order, with a duplicate.
		a := slices.Clone(ev.in.Node.Addresses)
		slices.Reverse(a)
		if len(a) > 0 {
			a = append(a, a[0])
		}
		ev.in.Node.Addresses = a
		do("reorder node addresses")
	case 15:
		f := ev.fresh()
		ev.in.ServiceSelector = f.ServiceSelector
		do("selector %v", f.ServiceSelector)
	case 16:
		do("no change")
	}
	return ev.in
}

// checkComputer drives a Computer through steps random changes and checks
// that every result equals Compute's, and that the Services of a result do
// not change after it was handed out. It returns how many results had
// contested frontends, contests that creation times decided, and warnings,
// to show that the input was not too weak.
func checkComputer(t *testing.T, seed uint64, steps int) (contested, byAge, warned int) {
	t.Helper()
	ev := &evolution{rng: rand.New(rand.NewPCG(seed, 1))}
	ev.in = ev.fresh()
	c := NewComputer()
	var prev []Service
	var prevRendered []string
	for step := range steps {
		if step > 0 {
			ev.step()
		}
		got, gotWarns := c.Compute(ev.in)
		want, wantWarns := Compute(ev.in)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
			t.Fatalf("seed %d step %d: Computer and Compute differ after\n  %s\ngot:  %q\n      %q\nwant: %q\n      %q",
				seed, step, ev.log, render(got), gotWarns, render(want), wantWarns)
		}
		// The list of an earlier result may be reused, but what it held,
		// backend lists included, must stay as it was: the reconciler
		// keeps copies of the Services.
		if step > 0 && !slices.Equal(render(State{Services: prev}), prevRendered) {
			t.Fatalf("seed %d step %d: an earlier result changed after\n  %s", seed, step, ev.log)
		}
		prev, prevRendered = slices.Clone(got.Services), render(got)
		if len(gotWarns) > 0 {
			warned++
		}
		if slices.ContainsFunc(gotWarns, func(w Warning) bool { return strings.Contains(w.Reason, "is also claimed by") }) {
			contested++
		}
		if slices.ContainsFunc(gotWarns, func(w Warning) bool { return strings.Contains(w.Reason, "(created earlier)") }) {
			byAge++
		}
	}
	return contested, byAge, warned
}

func TestComputerMatchesCompute(t *testing.T) {
	contested, byAge, warned := 0, 0, 0
	for seed := range uint64(40) {
		c, a, w := checkComputer(t, seed, 300)
		contested += c
		byAge += a
		warned += w
	}
	if contested == 0 || byAge == 0 || warned == 0 {
		t.Errorf("input too weak: %d results with contested frontends, %d decided by creation time, %d with warnings", contested, byAge, warned)
	}
	t.Logf("%d results with contested frontends, %d decided by creation time, %d with warnings", contested, byAge, warned)
}

func FuzzComputer(f *testing.F) {
	f.Add(uint64(1), uint8(50))
	f.Fuzz(func(t *testing.T, seed uint64, steps uint8) {
		checkComputer(t, seed, int(steps))
	})
}

// TestComputerRecomputesOnlyChanges checks the point of the Computer: an
// unchanged Service keeps its frontends (the very same backend arrays), and
// an unchanged input gives the very same State.
func TestComputerRecomputesOnlyChanges(t *testing.T) {
	in := Input{
		Node: hereWithAddrs,
		Services: []*corev1.Service{
			svc("web", ips("10.96.0.1"), http80),
			svc("api", ips("10.96.0.2"), http80),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4("web-a", "web", http8080, ready("10.0.0.1")),
			v4("api-a", "api", http8080, ready("10.0.1.1")),
		},
	}
	c := NewComputer()
	first, _ := c.Compute(in)
	again, _ := c.Compute(in)
	if &again.Services[0] != &first.Services[0] {
		t.Error("an unchanged input gave a new State")
	}

	next := in
	next.EndpointSlices = []*discoveryv1.EndpointSlice{
		in.EndpointSlices[0],
		v4("api-a", "api", http8080, ready("10.0.1.2")),
	}
	st, _ := c.Compute(next)
	want, _ := Compute(next)
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("got %q, want %q", render(st), render(want))
	}
	if &st.Services[0].Backends[0] != &first.Services[0].Backends[0] {
		t.Error("the unchanged service web was recomputed")
	}
	if st.Services[1].Backends[0].Addr != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("api was not recomputed: %q", render(st))
	}
}

// TestComputerSelectorAndNode checks that a new selector or node, which
// every Service depends on, is noticed although no object changed.
func TestComputerSelectorAndNode(t *testing.T) {
	in := Input{
		Node: NodeInfo{Name: "node-a", Addresses: addrs("192.168.1.10")},
		Services: []*corev1.Service{
			mod(svc("web", ips("10.96.0.1"), http80), with(withLabels("tier", "web"), nodePorts(30080))),
			mod(svc("local", ips("10.96.0.3"), http80), localPolicy),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4("local-a", "local", http8080, on("node-a", ready("10.0.3.1")), on("node-b", ready("10.0.3.2"))),
		},
	}
	c := NewComputer()
	for i, change := range []func(*Input){
		func(*Input) {},
		func(in *Input) { in.ServiceSelector = labels.SelectorFromSet(labels.Set{"tier": "web"}) },
		func(in *Input) { in.ServiceSelector = labels.SelectorFromSet(labels.Set{"tier": "db"}) },
		func(in *Input) { in.ServiceSelector = labels.Nothing() },
		func(in *Input) { in.ServiceSelector = labels.Everything() },
		func(in *Input) { in.Node.Name = "node-b" },
		func(in *Input) { in.Node.Addresses = addrs("192.168.1.11") },
		func(in *Input) { in.Node.Zone = "zone-a" },
	} {
		change(&in)
		got, gotWarns := c.Compute(in)
		want, wantWarns := Compute(in)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
			t.Fatalf("change %d: got %q %q, want %q %q", i, render(got), gotWarns, render(want), wantWarns)
		}
	}
}

package reconciler

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// fuzzState turns bytes into a desired state: up to 12 Services, each of
// one or two frontends, with up to 6 of 10 shared backends.
func fuzzState(b []byte) lb.State {
	var out []lb.Service
	for i := 0; i+1 < len(b) && len(out) < 24; i += 2 {
		n, set := int(b[i]%12), b[i+1]
		name := types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc-%02d", n)}
		if slices.ContainsFunc(out, func(s lb.Service) bool { return s.Name == name }) {
			continue
		}
		var bes []lb.Backend
		for j := range 10 {
			if set&(1<<(j%8)) != 0 && len(bes) < 6 && (j < 8 || set&1 != 0) {
				bes = append(bes, lb.Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(j + 1)}), Port: 80})
			}
		}
		ports := []uint16{80}
		if n%4 == 0 { // a Service of two frontends, admitted whole or not
			ports = append(ports, 443)
		}
		for _, p := range ports {
			out = append(out, lb.Service{
				Frontend: lb.Frontend{Addr: netip.AddrFrom4([4]byte{198, 19, 0, byte(n + 1)}), Port: p, Proto: lb.TCP},
				Name:     name, PortName: fmt.Sprint(p), Backends: bes,
			})
		}
	}
	slices.SortFunc(out, func(a, b lb.Service) int { return a.Frontend.Compare(b.Frontend) })
	return lb.State{Services: out}
}

// FuzzReconcilerWithinCapacity applies a sequence of states to maps far
// too small for some of them and checks, after every sync, what issue 10
// asks of a full map: no error, no frontend served that is not wanted,
// every wanted frontend served exactly or named over capacity (a stale
// one keeping a version that was wanted before), whole Services, and an
// empty state always emptying the maps.
func FuzzReconcilerWithinCapacity(f *testing.F) {
	f.Add([]byte{30, 8, 1, 2, 0, 0xff, 1, 0x0f, 2, 0xf0, 3, 0x33, 4, 0x55}, []byte{0, 0xff, 5, 3, 6, 7}, []byte{})
	f.Add([]byte{12, 3, 3, 4, 1, 0xff, 2, 0xff, 3, 0xff, 4, 0xff}, []byte{1, 0x01, 2, 0xff}, []byte{5, 0xff, 1, 0xff})
	f.Fuzz(func(t *testing.T, sizes, first, second []byte) {
		if len(sizes) < 4 {
			return
		}
		capacity := maps.Capacity{
			Services: 6 + int(sizes[0]%50), Members: 4 + int(sizes[1]%50),
			Backends: 2 + int(sizes[2]%10), Counters: 2 + int(sizes[3]%12),
		}
		capacity.Names = capacity.Counters
		fake := maps.NewFakeWithCapacity(capacity)
		r := New(fake, nil)
		wantBefore := map[lb.Frontend][][]string{} // every backend set wanted so far
		for round, want := range []lb.State{fuzzState(first), fuzzState(second), fuzzState(first), {}} {
			st, err := r.Apply(want)
			if err != nil {
				t.Fatalf("round %d (capacity %+v): %v", round, capacity, err)
			}
			desired := map[maps.Frontend][]string{}
			for _, s := range want.Services {
				fe := maps.Frontend{Addr: s.Frontend.Addr, Port: s.Frontend.Port, Proto: maps.ProtoTCP}
				var bes []string
				for _, b := range s.Backends {
					bes = append(bes, netip.AddrPortFrom(b.Addr, b.Port).String())
				}
				desired[fe] = bes
				wantBefore[s.Frontend] = append(wantBefore[s.Frontend], bes)
			}
			over := map[maps.Frontend]OverCapacity{}
			overServices := map[string]bool{}
			for _, o := range st.OverCapacity {
				over[o.Frontend] = o
				if !o.Stale {
					overServices[o.Service] = true
				}
			}
			got := resolved(t, fake)
			svcs, err := fake.Services()
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range svcs {
				bes, ok := desired[s.Frontend]
				if !ok {
					t.Fatalf("round %d: %s is served but not wanted", round, s.Frontend)
				}
				o, isOver := over[s.Frontend]
				switch {
				case isOver && !o.Stale:
					t.Fatalf("round %d: %s is served but listed over capacity as not served", round, s.Frontend)
				case isOver:
					lf := lb.Frontend{Addr: s.Frontend.Addr, Port: s.Frontend.Port, Proto: lb.TCP}
					if !slices.ContainsFunc(wantBefore[lf], func(old []string) bool { return sameSet(old, got[s.Frontend.String()]) }) {
						t.Fatalf("round %d: stale %s serves %v, never wanted", round, s.Frontend, got[s.Frontend.String()])
					}
				case !sameSet(bes, got[s.Frontend.String()]):
					t.Fatalf("round %d: %s serves %v, want %v", round, s.Frontend, got[s.Frontend.String()], bes)
				}
				if service, _, _ := strings.Cut(s.Name, ":"); overServices[service] {
					t.Fatalf("round %d: %s is served while another frontend of its Service is left out: not whole", round, s.Frontend)
				}
			}
			for fe := range desired {
				if _, ok := got[fe.String()]; !ok {
					if _, ok := over[fe]; !ok {
						t.Fatalf("round %d: %s is neither served nor listed over capacity", round, fe)
					}
				}
			}
			if round == 3 && len(svcs) != 0 {
				t.Fatalf("the empty state left %d frontends", len(svcs))
			}
			if round == 3 {
				if bes, _ := fake.Backends(); len(bes) != 0 {
					t.Fatalf("the empty state left %d backends", len(bes))
				}
			}
		}
	})
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

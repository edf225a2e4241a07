package reconciler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

func svc(vip string, port uint16, proto lb.Proto, name string, backends ...string) lb.Service {
	s := lb.Service{
		Frontend: lb.Frontend{Addr: netip.MustParseAddr(vip), Port: port, Proto: proto},
		Name:     types.NamespacedName{Namespace: "ns", Name: name},
	}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		s.Backends = append(s.Backends, lb.Backend{Addr: ap.Addr(), Port: ap.Port()})
	}
	return s
}

func state(s ...lb.Service) lb.State { return lb.State{Services: s} }

// resolved traces every frontend through the fake as the program would and
// returns frontend → the backends it can reach.
func resolved(t *testing.T, f *maps.Fake) map[string][]string {
	t.Helper()
	svcs, err := f.Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, s := range svcs {
		var got []string
		for n := range uint32(len(s.Backends)) {
			b, ok, err := f.Lookup(s.Frontend, n)
			if !ok || err != nil {
				t.Fatalf("%s: lookup %d: ok=%v err=%v", s.Frontend, n, ok, err)
			}
			got = append(got, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		slices.Sort(got)
		out[s.Frontend.String()] = got
	}
	return out
}

func expected(st lb.State) map[string][]string {
	out := map[string][]string{}
	for _, s := range st.Services {
		fe := maps.Frontend{Addr: s.Frontend.Addr, Port: s.Frontend.Port, Proto: uint8(s.Frontend.Proto)}
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, b.String())
		}
		slices.Sort(bs)
		out[fe.String()] = bs
	}
	return out
}

func assertResolves(t *testing.T, f *maps.Fake, want lb.State) {
	t.Helper()
	got := resolved(t, f)
	exp := expected(want)
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Fatalf("maps resolve to\n  %v\nwant\n  %v", got, exp)
	}
	// Backends nobody refers to must be gone.
	bes, _ := f.Backends()
	svcs, _ := f.Services()
	used := map[maps.BackendID]bool{}
	for _, s := range svcs {
		for _, id := range s.Backends {
			used[id] = true
		}
	}
	for id := range bes {
		if !used[id] {
			t.Errorf("backend %d (%s) is unused but still in the map", id, bes[id])
		}
	}
}

var (
	stateA = state(
		svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.1:8080", "198.18.0.2:8080", "198.18.0.3:8080"),
		svc("198.19.0.10", 53, lb.UDP, "dns", "198.18.0.1:53", "198.18.0.2:53"),
		svc("198.19.0.11", 443, lb.TCP, "empty"),
	)
	stateB = state(
		svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.2:8080", "198.18.0.4:8080"),
		svc("198.19.0.12", 80, lb.TCP, "new", "198.18.0.1:8080"),
		svc("198.19.0.11", 443, lb.TCP, "empty", "198.18.0.5:443"),
	)
	stateV6 = state(
		svc("fd00::10", 80, lb.TCP, "web6", "[fd00::1]:8080"),
		svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.2:8080"),
	)
)

func TestApplyConvergesAndIsIdempotent(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	for _, want := range []lb.State{stateA, stateB, stateA, {}, stateB} {
		if _, err := r.Apply(want); err != nil {
			t.Fatal(err)
		}
		assertResolves(t, f, want)
		st, err := r.Apply(want)
		if err != nil {
			t.Fatal(err)
		}
		if st.Published+st.Deleted+st.BackendsAdded+st.BackendsRemoved != 0 {
			t.Errorf("second apply of the same state wrote: %+v", st)
		}
	}
}

func TestEveryIntermediateStateIsConsistent(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	writes := 0
	f.OnWrite(func() {
		writes++
		if err := f.CheckConsistent(); err != nil {
			t.Fatalf("after write %d a reader could fail: %v", writes, err)
		}
	})
	for _, want := range []lb.State{stateA, stateB, {}, stateA, stateB} {
		if _, err := r.Apply(want); err != nil {
			t.Fatal(err)
		}
	}
	if writes == 0 {
		t.Fatal("no writes observed")
	}
}

func TestRestoreKeepsIDsAndWritesNothing(t *testing.T) {
	f := maps.NewFake()
	if _, err := New(f, nil).Apply(stateA); err != nil {
		t.Fatal(err)
	}
	before, _ := f.Services()
	// A restarted agent: fresh bookkeeping over the same maps.
	r2 := New(f, nil)
	st, err := r2.Apply(stateA)
	if err != nil {
		t.Fatal(err)
	}
	if st.Published+st.Deleted+st.BackendsAdded+st.BackendsRemoved != 0 {
		t.Errorf("restart rewrote unchanged state: %+v", st)
	}
	after, _ := f.Services()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("ids changed across restart:\n%v\n%v", before, after)
	}
	if _, err := r2.Apply(stateB); err != nil {
		t.Fatal(err)
	}
	assertResolves(t, f, stateB)
}

func TestProgramsBothFamiliesAndSkipsMixedOnes(t *testing.T) {
	f := maps.NewFake()
	st, err := New(f, nil).Apply(stateV6)
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 0 || st.Services != 2 {
		t.Errorf("stats = %+v, want 2 programmed", st)
	}
	assertResolves(t, f, stateV6)

	mixed := state(svc("fd00::10", 80, lb.TCP, "web6", "198.18.0.1:8080"))
	st, err = New(maps.NewFake(), nil).Apply(mixed)
	if err != nil || st.Skipped != 1 {
		t.Errorf("IPv6 frontend with an IPv4 backend: %+v, %v; want it skipped", st, err)
	}
}

func TestAffinityAndFlagsReachTheMaps(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	s := svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.1:8080")
	s.AffinityTimeout = 3 * time.Hour
	s.TrafficLocal = true
	if _, err := r.Apply(state(s)); err != nil {
		t.Fatal(err)
	}
	svcs, _ := f.Services()
	if got := svcs[0]; got.Flags != maps.FlagAffinity|maps.FlagLocal || got.AffinityTimeout != 10800 {
		t.Errorf("entry flags %b timeout %d, want affinity|local and 10800", got.Flags, got.AffinityTimeout)
	}
	// Turning affinity off is a change that must be written.
	s.AffinityTimeout = 0
	st, err := r.Apply(state(s))
	if err != nil || st.Published != 1 {
		t.Errorf("affinity switched off: %+v, %v; want one publish", st, err)
	}
}

// TestRecoversFromAFaultAtEveryStep fails the n-th map operation of a sync,
// for every n, and checks that the maps stayed consistent and that the next
// sync converges.
func TestRecoversFromAFaultAtEveryStep(t *testing.T) {
	errInjected := errors.New("injected fault")
	for _, from := range []lb.State{{}, stateA} {
		n := 1
		for ; ; n++ {
			f := maps.NewFake()
			calls := 0
			faulty := maps.NewFaulty(f, nil)
			r := New(faulty, nil)
			if _, err := r.Apply(from); err != nil {
				t.Fatal(err)
			}
			faulty.SetFail(func(op maps.Op) error {
				calls++
				if calls == n {
					return fmt.Errorf("%s: %w", op, errInjected)
				}
				return nil
			})
			f.OnWrite(func() {
				if err := f.CheckConsistent(); err != nil {
					t.Fatalf("fault %d: inconsistent: %v", n, err)
				}
			})
			_, err := r.Apply(stateB)
			if err == nil {
				if calls < n {
					break // every step has had its fault
				}
				t.Fatalf("fault %d was swallowed", n)
			}
			if !errors.Is(err, errInjected) {
				t.Fatalf("fault %d: error %v does not wrap the fault", n, err)
			}
			faulty.SetFail(nil)
			if _, err := r.Apply(stateB); err != nil {
				t.Fatalf("fault %d: retry: %v", n, err)
			}
			assertResolves(t, f, stateB)
		}
		if n < 6 {
			t.Errorf("only %d steps faulted; the sync has more", n-1)
		}
	}
}

func TestRestoreFailureIsReturnedAndRetried(t *testing.T) {
	f := maps.NewFake()
	fail := true
	faulty := maps.NewFaulty(f, func(op maps.Op) error {
		if fail && op == maps.OpServices {
			return errors.New("read failed")
		}
		return nil
	})
	r := New(faulty, nil)
	if _, err := r.Apply(stateA); err == nil {
		t.Fatal("apply with a failing restore succeeded")
	}
	if svc, _ := f.Len(); svc != 0 {
		t.Fatal("wrote before restoring")
	}
	fail = false
	if _, err := r.Apply(stateA); err != nil {
		t.Fatal(err)
	}
	assertResolves(t, f, stateA)
}

func TestDepartedBackendsAreReported(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	if _, err := r.Apply(stateA); err != nil {
		t.Fatal(err)
	}
	st, err := r.Apply(stateB)
	if err != nil {
		t.Fatal(err)
	}
	// web lost 198.18.0.1 and .3; dns (deleted) lost both of its own.
	bes := map[maps.BackendID]maps.Backend{}
	for id, b := range mustBackendsBefore(t, stateA) {
		bes[id] = b
	}
	var got []string
	for _, d := range st.Departed {
		got = append(got, bes[d.Backend].String())
	}
	slices.Sort(got)
	want := []string{"198.18.0.1:53/UDP", "198.18.0.1:8080/TCP", "198.18.0.2:53/UDP", "198.18.0.3:8080/TCP"}
	if !slices.Equal(got, want) {
		t.Errorf("departed = %v, want %v", got, want)
	}
	if st, _ := r.Apply(stateB); len(st.Departed) != 0 {
		t.Errorf("an unchanged sync reported departures: %v", st.Departed)
	}
}

// mustBackendsBefore returns the backend ids a fresh reconciler gives st.
func mustBackendsBefore(t *testing.T, st lb.State) map[maps.BackendID]maps.Backend {
	t.Helper()
	f := maps.NewFake()
	if _, err := New(f, nil).Apply(st); err != nil {
		t.Fatal(err)
	}
	bes, err := f.Backends()
	if err != nil {
		t.Fatal(err)
	}
	return bes
}

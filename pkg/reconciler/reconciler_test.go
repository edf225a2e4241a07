package reconciler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
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
				if err := errors.Join(f.CheckConsistent(), checkVIPs(f)); err != nil {
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

// dump is what the maps tell a reader, with ids resolved: per frontend its
// name, flags, affinity and backends in slot order, and the set of
// backends. Two maps with equal dumps serve every connect alike, whatever
// ids they chose.
func dump(t *testing.T, f *maps.Fake) string {
	t.Helper()
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}
	svcs, err := f.Services()
	if err != nil {
		t.Fatal(err)
	}
	bes, err := f.Backends()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range svcs {
		var got []string
		for _, id := range s.Backends {
			got = append(got, bes[id].String())
		}
		lines = append(lines, fmt.Sprintf("%s %s flags=%b affinity=%d %v", s.Frontend, s.Name, s.Flags, s.AffinityTimeout, got))
	}
	for _, b := range bes {
		lines = append(lines, "backend "+b.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// randomState changes a few frontends of prev, from small pools so that
// backends are shared and frontends come and go. It also makes what the
// model never makes: unsorted output, a frontend listed twice (once
// IPv4-mapped), frontends the dataplane cannot program.
func randomState(rng *rand.Rand, prev lb.State) lb.State {
	vips := []string{"198.19.0.1", "198.19.0.2", "198.19.0.3", "fd00::10", "::ffff:198.19.0.1"}
	bes4 := []string{"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:8080"}
	bes6 := []string{"[fd00::1]:80", "[fd00::2]:80"}
	oneOf := func(s []string) string { return s[rng.IntN(len(s))] }
	random := func() lb.Service {
		vip := oneOf(vips)
		pool := bes4
		if netip.MustParseAddr(vip).Is6() && !netip.MustParseAddr(vip).Is4In6() {
			pool = bes6
		}
		var backends []string
		for _, b := range pool {
			if rng.IntN(2) == 0 {
				backends = append(backends, b)
			}
		}
		if rng.IntN(20) == 0 {
			backends = append(backends, oneOf(bes6)) // mixed family: skipped
		}
		s := svc(vip, uint16(80+rng.IntN(2)), []lb.Proto{lb.TCP, lb.UDP}[rng.IntN(2)], oneOf([]string{"a", "b", "c"}), backends...)
		s.Kind = lb.FrontendKind(rng.IntN(4))
		s.TrafficLocal = rng.IntN(4) == 0
		s.AffinityTimeout = time.Duration(rng.IntN(2)) * time.Hour
		return s
	}
	next := slices.Clone(prev.Services)
	for range 1 + rng.IntN(3) {
		switch i := rng.IntN(len(next) + 1); {
		case i == len(next) || rng.IntN(3) == 0:
			next = append(next, random())
		case rng.IntN(2) == 0:
			next = slices.Delete(next, i, i+1)
		default:
			next[i] = random()
		}
	}
	if rng.IntN(4) != 0 {
		// Usually what the model makes: sorted, one Service per frontend.
		slices.SortStableFunc(next, func(a, b lb.Service) int { return a.Frontend.Compare(b.Frontend) })
		next = slices.CompactFunc(next, func(a, b lb.Service) bool { return a.Frontend == b.Frontend })
	}
	return lb.State{Services: next}
}

// TestIncrementalAppliesMatchAFreshApply applies a long random sequence of
// states to one reconciler, failing a random write now and then and
// reconciling now and then, and
// checks after every sync that its maps serve what a fresh reconciler's
// maps serve for the same state.
func TestIncrementalAppliesMatchAFreshApply(t *testing.T) {
	errInjected := errors.New("injected fault")
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 2))
		f := maps.NewFake()
		faulty := maps.NewFaulty(f, nil)
		r := New(faulty, nil)
		f.OnWrite(func() {
			if err := errors.Join(f.CheckConsistent(), checkVIPs(f)); err != nil {
				t.Fatalf("seed %d: a reader could fail: %v", seed, err)
			}
		})
		var st lb.State
		for step := range 200 {
			st = randomState(rng, st)
			if rng.IntN(5) == 0 {
				n, calls := 1+rng.IntN(6), 0
				faulty.SetFail(func(op maps.Op) error {
					if calls++; calls == n {
						return fmt.Errorf("%s: %w", op, errInjected)
					}
					return nil
				})
				if _, err := r.Apply(st); err != nil && !errors.Is(err, errInjected) {
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
				faulty.SetFail(nil)
			}
			if rng.IntN(4) == 0 {
				// A periodic reconciliation, also right after a failed
				// write: the bookkeeping is then not to be trusted.
				r.Reconcile()
			}
			stats, err := r.Apply(st)
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			fresh := maps.NewFake()
			freshStats, err := New(fresh, nil).Apply(st)
			if err != nil {
				t.Fatalf("seed %d step %d: fresh: %v", seed, step, err)
			}
			if got, want := dump(t, f), dump(t, fresh); got != want {
				t.Fatalf("seed %d step %d: incremental maps\n%s\nfresh maps\n%s", seed, step, got, want)
			}
			if got, want := vipsOf(t, f), vipsOf(t, fresh); !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: incremental cluster IPs %v, fresh %v", seed, step, got, want)
			}
			if stats.Services != freshStats.Services || stats.Backends != freshStats.Backends {
				t.Fatalf("seed %d step %d: stats %+v, fresh %+v", seed, step, stats, freshStats)
			}
			again, err := r.Apply(st)
			if err != nil || again.Published+again.Deleted+again.BackendsAdded+again.BackendsRemoved+again.VIPsAdded+again.VIPsDeleted != 0 {
				t.Fatalf("seed %d step %d: the same state again wrote %+v, %v", seed, step, again, err)
			}
		}
	}
}

// TestSameServiceSeesEveryField changes each field of an lb.Service in
// turn: sameService must notice every one, or a change of that field would
// never reach the maps.
func TestSameServiceSeesEveryField(t *testing.T) {
	base := svc("198.19.0.1", 80, lb.TCP, "web", "198.18.0.1:80")
	typ := reflect.TypeOf(base)
	for i := range typ.NumField() {
		changed := base
		changed.Backends = slices.Clone(base.Backends)
		v := reflect.ValueOf(&changed).Elem().Field(i)
		switch f := v.Addr().Interface().(type) {
		case *lb.Frontend:
			f.Port++
		case *lb.FrontendKind:
			*f = lb.KindNodePort
		case *types.NamespacedName:
			f.Name += "x"
		case *string:
			*f += "x"
		case *[]lb.Backend:
			if len(*f) == 0 {
				*f = []lb.Backend{{Addr: netip.MustParseAddr("198.18.0.9"), Port: 80}}
			} else {
				(*f)[0].Port++
			}
		case *lb.Policy:
			*f = lb.PolicyLeastConnections
		case *bool:
			*f = !*f
		case *time.Duration:
			*f++
		default:
			t.Fatalf("field %s of type %s: teach this test to change it", typ.Field(i).Name, v.Type())
		}
		if sameService(&base, &changed) {
			t.Errorf("sameService misses a change of %s", typ.Field(i).Name)
		}
	}
}

// TestFrontendListedTwiceLastWins: the model never lists a frontend twice,
// but a hand-made state may; the last listing is what a reader gets, as if
// each had been written in turn.
func TestFrontendListedTwiceLastWins(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	first := svc("198.19.0.1", 80, lb.TCP, "first", "198.18.0.1:80")
	last := svc("198.19.0.1", 80, lb.TCP, "last", "198.18.0.2:80")
	for range 2 { // the second time from the remembered state
		if _, err := r.Apply(state(first, last)); err != nil {
			t.Fatal(err)
		}
		assertResolves(t, f, state(last))
	}
	if _, err := r.Apply(state(last, first)); err != nil {
		t.Fatal(err)
	}
	assertResolves(t, f, state(first))
}

// TestDeparturesOfALargeService checks the set-based path of departures.
func TestDeparturesOfALargeService(t *testing.T) {
	var before, after []maps.BackendID
	for id := range maps.BackendID(100) {
		before = append(before, id+1)
		if id%10 != 0 {
			after = append(after, id+1)
		}
	}
	got := departures(7, before, after)
	if len(got) != 10 || got[0] != (maps.Departure{RevNATID: 7, Backend: 1}) || got[9].Backend != 91 {
		t.Errorf("departures = %v, want backends 1, 11, ..., 91", got)
	}
}

// TestEjectedBackendsDoNotDepart: a backend that outlier ejection leaves
// out is still a member; its sockets are not stale, so it is no departure,
// and the frontend is written without it; a backend that really leaves
// still departs. The flag of least-connections reaches the kernel.
func TestEjectedBackendsDoNotDepart(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	all := svc("198.19.0.1", 80, lb.TCP, "web", "198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80")
	all.Policy = lb.PolicyLeastConnections
	if _, err := r.Apply(state(all)); err != nil {
		t.Fatal(err)
	}
	ejected := all
	ejected.Backends = slices.Clone(all.Backends[1:])
	ejected.Ejected = all.Backends[:1]
	st, err := r.Apply(state(ejected))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Departed) != 0 {
		t.Errorf("ejecting a backend reported departures %v", st.Departed)
	}
	svcs, err := f.Services()
	if err != nil || len(svcs) != 1 || len(svcs[0].Backends) != 2 {
		t.Fatalf("kernel after the ejection: %+v, %v; want 2 backends", svcs, err)
	}
	if svcs[0].Flags&maps.FlagLeastConn == 0 {
		t.Errorf("flags %#x lack FlagLeastConn", svcs[0].Flags)
	}
	// The ejected backend stays in the backend map (its outcomes with it),
	// also through a periodic reconciliation, which rereads the maps (and
	// so forgets which members were held out).
	if bes, _ := f.Backends(); len(bes) != 3 {
		t.Errorf("backend map after the ejection: %v, want all 3 kept", bes)
	}
	r.Reconcile()
	if st, err := r.Apply(state(ejected)); err != nil || len(st.Departed) != 0 || st.BackendsRemoved != 0 {
		t.Errorf("a reconciliation during the ejection: %+v, %v; want nothing removed", st, err)
	}
	if bes, _ := f.Backends(); len(bes) != 3 {
		t.Errorf("backend map after a reconciliation: %v, want all 3 kept", bes)
	}
	// Leaving the Service while ejected is a departure.
	left := all
	left.Backends = slices.Clone(all.Backends[1:])
	left.Ejected = nil
	if st, err := r.Apply(state(left)); err != nil || len(st.Departed) != 1 {
		t.Errorf("the ejected backend leaving the Service: departed %v, %v; want 1", st.Departed, err)
	}
	// Its entry goes at the next sync's collection of unused backends.
	if _, err := r.Apply(state(left)); err != nil {
		t.Fatal(err)
	}
	if bes, _ := f.Backends(); len(bes) != 2 {
		t.Errorf("backend map after it left: %v, want 2", bes)
	}
	if _, err := r.Apply(state(ejected)); err != nil {
		t.Fatal(err)
	}
	gone := ejected
	gone.Backends = slices.Clone(all.Backends[2:])
	if st, err := r.Apply(state(gone)); err != nil || len(st.Departed) != 1 {
		t.Errorf("a backend leaving while another is ejected: departed %v, %v; want 1", st.Departed, err)
	}
}

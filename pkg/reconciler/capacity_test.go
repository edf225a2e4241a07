package reconciler

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// services makes n single-frontend Services named svc-00, svc-01, ...,
// each with k backends of its own.
func services(n, k int) []lb.Service {
	var out []lb.Service
	for i := range n {
		var bes []string
		for j := range k {
			bes = append(bes, fmt.Sprintf("198.18.%d.%d:80", i, j+1))
		}
		out = append(out, svc(fmt.Sprintf("198.19.0.%d", i+1), 80, lb.TCP, fmt.Sprintf("svc-%02d", i), bes...))
	}
	return out
}

func overNames(st Stats) []string {
	var out []string
	for _, o := range st.OverCapacity {
		out = append(out, o.Name)
	}
	return out
}

func servedNames(t *testing.T, f *maps.Fake) []string {
	t.Helper()
	svcs, err := f.Services()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range svcs {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

// TestFinding2FreshStartOverCapacityServesWhatFits: a first sync with more
// Services than the service map holds succeeds, serves the ones that fit
// (chosen by name, so the same on every node and every restart) and names
// the rest; applying the same state again writes nothing and fails nothing.
func TestFinding2FreshStartOverCapacityServesWhatFits(t *testing.T) {
	// 10 Services × 4 backends need 5 entries each; 4 stay in reserve.
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 40, Members: 40})
	r := New(f, nil)
	want := state(services(10, 4)...)
	st, err := r.Apply(want)
	if err != nil {
		t.Fatalf("over capacity is not an error: %v", err)
	}
	// 7 × 5 = 35 entries + 4 reserve = 39 ≤ 40; an 8th would need 44.
	served := servedNames(t, f)
	if want := []string{"ns/svc-00", "ns/svc-01", "ns/svc-02", "ns/svc-03", "ns/svc-04", "ns/svc-05", "ns/svc-06"}; !slices.Equal(served, want) {
		t.Fatalf("served %v, want %v", served, want)
	}
	if got, want := overNames(st), []string{"ns/svc-07", "ns/svc-08", "ns/svc-09"}; !slices.Equal(got, want) {
		t.Fatalf("over capacity %v, want %v", got, want)
	}
	if st.Services != 7 {
		t.Errorf("stats say %d programmed, want 7", st.Services)
	}
	again, err := r.Apply(want)
	if err != nil || again.Published+again.Deleted+again.BackendsAdded+again.BackendsRemoved != 0 || len(again.OverCapacity) != 3 {
		t.Fatalf("the same state again: %+v, %v; want no write and the same 3 over capacity", again, err)
	}
	// A restarted agent over the same maps keeps the same choice.
	st2, err := New(f, nil).Apply(want)
	if err != nil || st2.Published+st2.Deleted != 0 || !slices.Equal(overNames(st2), overNames(st)) {
		t.Fatalf("restart: %+v, %v; want no write and the same over-capacity list", st2, err)
	}
}

// TestFinding2DeleteAndShrinkApplyWhenFull: with the map as full as the
// reconciler lets it get, a deleted Service goes and a shrink applies, and
// the room they free serves a Service that had none.
func TestFinding2DeleteAndShrinkApplyWhenFull(t *testing.T) {
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 40, Members: 40})
	r := New(f, nil)
	all := services(10, 4)
	if _, err := r.Apply(state(all...)); err != nil {
		t.Fatal(err)
	}
	// Shrink svc-00 to one backend, delete svc-01: 3 + 5 entries free.
	shrunk := slices.Clone(all)
	shrunk[0].Backends = shrunk[0].Backends[:1]
	next := append([]lb.Service{shrunk[0]}, shrunk[2:]...)
	st, err := r.Apply(state(next...))
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted != 1 {
		t.Errorf("deleted %d frontends, want 1", st.Deleted)
	}
	svcs, _ := f.Services()
	for _, s := range svcs {
		if s.Name == "ns/svc-00" && len(s.Backends) != 1 {
			t.Errorf("svc-00 has %d backends after the shrink, want 1", len(s.Backends))
		}
		if s.Name == "ns/svc-01" {
			t.Error("svc-01 is still served after its deletion")
		}
	}
	// svc-00 holds 2 entries and svc-02…06 hold 25: svc-07 fits (32 +
	// reserve 4), svc-08 would not (37 + 4 > 40).
	if got, want := overNames(st), []string{"ns/svc-08", "ns/svc-09"}; !slices.Equal(got, want) {
		t.Fatalf("over capacity %v, want %v", got, want)
	}
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}
}

// TestFinding2DeleteAndShrinkApplyWhenExactlyFull: 8 Services of 4
// backends fill a 40-entry map to the last entry when no room is kept (as
// a4f4428 did: each publish then needs an entry that is not there, and a
// delete that would free one comes after it, so nothing applies again).
// Now the delete and the shrink apply and the room goes to the next
// Service.
func TestFinding2DeleteAndShrinkApplyWhenExactlyFull(t *testing.T) {
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 40, Members: 40})
	r := New(f, nil)
	all := services(8, 4)
	if _, err := r.Apply(state(all...)); err != nil {
		t.Fatal(err)
	}
	shrunk := slices.Clone(all)
	shrunk[0].Backends = shrunk[0].Backends[:1]
	next := append([]lb.Service{shrunk[0]}, shrunk[2:]...)
	st, err := r.Apply(state(next...))
	if err != nil {
		t.Fatalf("delete and shrink with the map full: %v", err)
	}
	svcs, _ := f.Services()
	for _, s := range svcs {
		if s.Name == "ns/svc-00" && len(s.Backends) != 1 {
			t.Errorf("svc-00 has %d backends after the shrink, want 1", len(s.Backends))
		}
		if s.Name == "ns/svc-01" {
			t.Error("svc-01 is still served after its deletion")
		}
	}
	if len(st.OverCapacity) != 0 || len(svcs) != 7 {
		t.Errorf("after the delete: %d served, over capacity %v; want 7 and none", len(svcs), overNames(st))
	}
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}
}

// TestFinding2ServedServiceKeepsItsPlace: a new Service that sorts first
// does not take the room of one already served.
func TestFinding2ServedServiceKeepsItsPlace(t *testing.T) {
	// Room for one Service of 4 backends and the reserve, not two.
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 13, Members: 13})
	r := New(f, nil)
	late := svc("198.19.1.1", 80, lb.TCP, "zz-served", "198.18.9.1:80", "198.18.9.2:80", "198.18.9.3:80", "198.18.9.4:80")
	if _, err := r.Apply(state(late)); err != nil {
		t.Fatal(err)
	}
	early := svc("198.19.0.1", 80, lb.TCP, "aa-new", "198.18.8.1:80", "198.18.8.2:80", "198.18.8.3:80", "198.18.8.4:80")
	st, err := r.Apply(state(early, late))
	if err != nil {
		t.Fatal(err)
	}
	if got := servedNames(t, f); !slices.Equal(got, []string{"ns/zz-served"}) {
		t.Fatalf("served %v, want the Service served before", got)
	}
	if got := overNames(st); !slices.Equal(got, []string{"ns/aa-new"}) {
		t.Fatalf("over capacity %v, want ns/aa-new", got)
	}
}

// TestFinding2ChangeOfAServedServiceWhenFull: a same-size change applies
// in the reserve; growth that does not fit keeps the served version and
// is reported, every sync, without an error loop; once room is freed it
// applies.
func TestFinding2ChangeOfAServedServiceWhenFull(t *testing.T) {
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 40, Members: 40})
	r := New(f, nil)
	all := services(7, 4) // 35 entries + reserve 4
	if _, err := r.Apply(state(all...)); err != nil {
		t.Fatal(err)
	}
	moved := slices.Clone(all)
	moved[3].Backends = append([]lb.Backend(nil), moved[3].Backends...)
	moved[3].Backends[0].Port = 81 // a pod replaced
	st, err := r.Apply(state(moved...))
	if err != nil || st.Published != 1 || len(st.OverCapacity) != 0 {
		t.Fatalf("same-size change when full: %+v, %v; want it published", st, err)
	}
	assertResolves(t, f, state(moved...))

	grown := slices.Clone(moved)
	grown[5].Backends = append(slices.Clone(grown[5].Backends), lb.Backend{Addr: grown[5].Backends[0].Addr, Port: 99})
	for range 3 {
		st, err = r.Apply(state(grown...))
		if err != nil {
			t.Fatalf("growth over capacity: %v; want it reported, not failed", err)
		}
		if len(st.OverCapacity) != 1 || !st.OverCapacity[0].Stale || st.OverCapacity[0].Name != "ns/svc-05" {
			t.Fatalf("over capacity = %+v, want svc-05 kept at its older version", st.OverCapacity)
		}
		if st.Published != 0 {
			t.Fatalf("published %d while nothing fits", st.Published)
		}
	}
	assertResolves(t, f, state(moved...)) // the older version still serves
	// Deleting another Service frees room: the growth applies.
	freed := append(slices.Clone(grown[:6]), grown[6+1:]...)
	freed = slices.DeleteFunc(freed, func(s lb.Service) bool { return s.Name.Name == "svc-00" })
	st, err = r.Apply(state(freed...))
	if err != nil || len(st.OverCapacity) != 0 {
		t.Fatalf("after freeing room: %+v, %v", st, err)
	}
	assertResolves(t, f, state(freed...))
}

// TestFinding2TransientNoMemoryIsRetried: ENOMEM from the kernel (seen
// once for the per-CPU counter map) is retried inside the sync.
func TestFinding2TransientNoMemoryIsRetried(t *testing.T) {
	f := maps.NewFake()
	failures := 2
	f.FailWrites(func(w maps.Write) error {
		if failures > 0 && !w.Delete {
			failures--
			return maps.ErrNoMemory
		}
		return nil
	})
	r := New(f, nil)
	if _, err := r.Apply(stateA); err != nil {
		t.Fatalf("transient ENOMEM was not retried: %v", err)
	}
	if failures != 0 {
		t.Fatal("the fault was never injected")
	}
	assertResolves(t, f, stateA)
}

// TestFinding2KernelFullIsAnErrorThatResyncs: if the kernel's map is
// fuller than the bookkeeping (someone else's entries), the write fails
// with ErrMapFull, and the next sync rereads the maps and makes progress.
func TestFinding2KernelFullIsAnErrorThatResyncs(t *testing.T) {
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 40, Members: 40})
	r := New(f, nil)
	if _, err := r.Apply(state(services(2, 4)...)); err != nil {
		t.Fatal(err)
	}
	full := true
	f.FailWrites(func(w maps.Write) error {
		if full && !w.Delete {
			return maps.ErrMapFull
		}
		return nil
	})
	if _, err := r.Apply(state(services(4, 4)...)); !errors.Is(err, maps.ErrMapFull) {
		t.Fatalf("err = %v, want ErrMapFull", err)
	}
	full = false
	if _, err := r.Apply(state(services(4, 4)...)); err != nil {
		t.Fatal(err)
	}
	assertResolves(t, f, state(services(4, 4)...))
}

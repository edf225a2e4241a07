package reconciler

import (
	"reflect"
	"testing"

	"github.com/socklb/socklb/pkg/maps"
)

// TestFinding6ReconciliationRepairsDrift changes the maps behind the
// reconciler's back, as bpftool or a second writer would: a reconciliation
// finds each difference, counts it and repairs it; without one, nothing
// would look (the next ordinary sync trusts its bookkeeping).
func TestFinding6ReconciliationRepairsDrift(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	if _, err := r.Apply(stateA); err != nil {
		t.Fatal(err)
	}
	svcs, _ := f.Services()
	var web, dns maps.Service
	for _, s := range svcs {
		switch s.Name {
		case "ns/web":
			web = s
		case "ns/dns":
			dns = s
		}
	}
	// An entry deleted, another frontend's set replaced by hand, and a
	// frontend nobody wrote.
	if err := f.DeleteService(web.Frontend); err != nil {
		t.Fatal(err)
	}
	dns.Backends = dns.Backends[:1]
	if err := f.PublishService(dns); err != nil {
		t.Fatal(err)
	}
	stray := maps.Service{Frontend: maps.Frontend{Addr: web.Frontend.Addr, Port: 9, Proto: maps.ProtoTCP}, RevNATID: 999, Name: "x/stray"}
	if err := f.PublishService(stray); err != nil {
		t.Fatal(err)
	}

	st, err := r.Apply(stateA)
	if err != nil {
		t.Fatal(err)
	}
	if st.Published+st.Deleted != 0 {
		t.Fatalf("an ordinary sync wrote %+v; it trusts its bookkeeping", st)
	}

	r.Reconcile()
	st, err = r.Apply(stateA)
	if err != nil {
		t.Fatal(err)
	}
	want := Drift{MissingFrontends: 1, ChangedFrontends: 1, UnknownFrontends: 1}
	if st.Drift != want {
		t.Errorf("drift = %+v, want %+v", st.Drift, want)
	}
	if st.Published != 2 || st.Deleted != 1 {
		t.Errorf("repair published %d and deleted %d, want 2 and 1", st.Published, st.Deleted)
	}
	assertResolves(t, f, stateA)

	r.Reconcile()
	if st, err := r.Apply(stateA); err != nil || st.Drift.Total() != 0 || st.Published+st.Deleted != 0 {
		t.Fatalf("a reconciliation of intact maps: %+v, %v; want no drift and no write", st, err)
	}
}

// TestFinding6DamagedFrontendIsRepublishedAtRestore: a frontend whose
// backend was deleted from the backend map (a slot pointing nowhere) is
// republished when the agent restores, not a fatal error.
func TestFinding6DamagedFrontendIsRepublishedAtRestore(t *testing.T) {
	f := maps.NewFake()
	if _, err := New(f, nil).Apply(stateA); err != nil {
		t.Fatal(err)
	}
	bes, _ := f.Backends()
	for id, b := range bes {
		if b.Port == 8080 {
			if err := f.DeleteBackend(id); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	r := New(f, nil) // a restarted agent
	st, err := r.Apply(stateA)
	if err != nil {
		t.Fatalf("restore over a damaged frontend: %v", err)
	}
	if st.Drift.DamagedFrontends != 1 || st.Published != 1 {
		t.Errorf("stats %+v: want one damaged frontend republished", st)
	}
	assertResolves(t, f, stateA)
}

// TestFinding6MissingSlotAtRestoreIsRepublished: a live slot deleted from
// the service map (bpftool) makes a restarted agent's restore fail whole on
// a4f4428; now the frontend is restored damaged and republished, and the
// rest is untouched.
func TestFinding6MissingSlotAtRestoreIsRepublished(t *testing.T) {
	f := maps.NewFake()
	if _, err := New(f, nil).Apply(stateA); err != nil {
		t.Fatal(err)
	}
	fe := stateA.Services[0].Frontend
	if err := f.DeleteSlot(maps.Frontend{Addr: fe.Addr, Port: fe.Port, Proto: maps.ProtoTCP}, 0); err != nil {
		t.Fatal(err)
	}
	if err := New(f, nil).Restore(); err != nil {
		t.Fatalf("restore with one slot missing: %v", err)
	}
	st, err := New(f, nil).Apply(stateA) // a restarted agent
	if err != nil {
		t.Fatalf("sync after the restore: %v", err)
	}
	if st.Drift.DamagedFrontends != 1 || st.Published != 1 {
		t.Errorf("stats %+v: want one damaged frontend republished", st)
	}
	assertResolves(t, f, stateA)
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}
}

// TestReconciliationWithoutDriftKeepsBookkeeping: a periodic reread that
// finds the maps as written keeps what the reconciler knows, so the sync
// after it plans only what changed (rebuilding would replan every
// frontend, seconds at 100 000 Services); with drift it rebuilds.
func TestReconciliationWithoutDriftKeepsBookkeeping(t *testing.T) {
	f := maps.NewFake()
	r := New(f, nil)
	if _, err := r.Apply(stateA); err != nil {
		t.Fatal(err)
	}
	before := reflect.ValueOf(r.services).Pointer()
	r.Reconcile()
	st, err := r.Apply(stateA)
	if err != nil {
		t.Fatal(err)
	}
	if st.Drift.Total() != 0 || st.Published != 0 {
		t.Fatalf("drift %v, published %d: want none", st.Drift, st.Published)
	}
	if !r.complete || reflect.ValueOf(r.services).Pointer() != before {
		t.Error("a reread without drift rebuilt the bookkeeping")
	}

	svcs, _ := f.Services()
	if err := f.DeleteService(svcs[0].Frontend); err != nil {
		t.Fatal(err)
	}
	r.Reconcile()
	if st, err = r.Apply(stateA); err != nil {
		t.Fatal(err)
	}
	if st.Drift.MissingFrontends != 1 || st.Published != 1 {
		t.Fatalf("drift %v, published %d: want the deleted frontend found and written again", st.Drift, st.Published)
	}
	if reflect.ValueOf(r.services).Pointer() == before {
		t.Error("a reread with drift kept the old bookkeeping")
	}
}

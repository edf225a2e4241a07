package ejection

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/outlier"
)

var (
	web = types.NamespacedName{Namespace: "shop", Name: "web"}
	t0  = time.Unix(1_000_000, 0)
	fe  = lb.Frontend{Addr: netip.MustParseAddr("198.19.0.10"), Port: 80, Proto: lb.TCP}
)

func backend(i int) lb.Backend {
	return lb.Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), Port: 8080}
}

// ids resolves revNAT 1 to fe and backend id i to backend(i).
type ids struct{}

func (ids) FrontendOf(r maps.RevNATID) (maps.Frontend, bool) {
	if r != 1 {
		return maps.Frontend{}, false
	}
	return maps.Frontend{Addr: fe.Addr, Port: fe.Port, Proto: uint8(fe.Proto)}, true
}

func (ids) BackendOf(id maps.BackendID) (maps.Backend, bool) {
	if id == 0 || id > 9 {
		return maps.Backend{}, false
	}
	b := backend(int(id))
	return maps.Backend{Addr: b.Addr, Port: b.Port, Proto: maps.ProtoTCP}, true
}

func state(n int, mod func(*lb.Service)) lb.State {
	s := lb.Service{Frontend: fe, Name: web, OutlierDetection: true}
	for i := 1; i <= n; i++ {
		s.Backends = append(s.Backends, backend(i))
	}
	if mod != nil {
		mod(&s)
	}
	return lb.State{Services: []lb.Service{s}}
}

func TestReportEjectsRecordsAndReadmits(t *testing.T) {
	store := maps.NewFake()
	triggered, ejections := 0, 0
	e := started(Options{Config: outlier.DefaultConfig, Store: store,
		Trigger: func() { triggered++ },
		OnEject: func(svc types.NamespacedName, b lb.Backend) {
			if svc != web || b != backend(2) {
				t.Errorf("OnEject(%v, %v), want %v and %v", svc, b, web, backend(2))
			}
			ejections++
		}})
	in := state(3, nil)
	store.MarkAvoided(2)
	e.Report(Report{RevNAT: 1, Backend: 2})
	e.Report(Report{RevNAT: 1, Backend: 2}) // coalesced
	if triggered != 2 {
		t.Errorf("%d triggers, want one per report", triggered)
	}
	out, next := e.Adjust(in, ids{}, t0)
	got := out.Services[0]
	if len(got.Backends) != 2 || len(got.Ejected) != 1 || got.Ejected[0] != backend(2) {
		t.Fatalf("after the report: backends %v, ejected %v; want backend 2 ejected", got.Backends, got.Ejected)
	}
	if len(in.Services[0].Backends) != 3 {
		t.Error("Adjust changed its input")
	}
	// The datapath avoids it until the decision is written.
	e.Applied(errors.New("write failed"))
	if a := store.Avoided(); len(a) != 1 {
		t.Errorf("after a failed write the datapath avoids %v, want backend 2 still", a)
	}
	e.Applied(nil)
	if a := store.Avoided(); len(a) != 0 {
		t.Errorf("after the write the datapath still avoids %v", a)
	}
	if ejections != 1 {
		t.Errorf("%d ejections counted, want 1", ejections)
	}
	if want := t0.Add(30 * time.Second); !next.Equal(want) {
		t.Errorf("next adjust at %v, want the ejection's end %v", next, want)
	}
	rec, err := store.Ejections()
	if err != nil {
		t.Fatal(err)
	}
	b2 := maps.Backend{Addr: backend(2).Addr, Port: 8080, Proto: maps.ProtoTCP}
	if r, ok := rec[b2]; !ok || r.Ejections != 1 || !r.Until.Equal(t0.Add(30*time.Second)) {
		t.Errorf("recorded %+v, want ejection 1 until +30s", rec)
	}
	if ej := e.Ejected(); len(ej) != 1 || ej[0].Backend != backend(2) || len(ej[0].Services) != 1 || ej[0].Services[0] != web {
		t.Errorf("Ejected() = %+v", ej)
	}

	// A restarted agent reads the record and keeps the backend out.
	again := started(Options{Config: outlier.DefaultConfig, Store: store})
	if out, _ := again.Adjust(in, ids{}, t0.Add(time.Second)); len(out.Services[0].Backends) != 2 {
		t.Errorf("after a restart: %v, want backend 2 still out", out.Services[0].Backends)
	}

	// At the ejection's end it is back; the next ejection lasts twice as long.
	if out, _ := e.Adjust(in, ids{}, t0.Add(30*time.Second)); len(out.Services[0].Backends) != 3 || out.Services[0].Ejected != nil {
		t.Errorf("at the end: %+v, want all 3 back", out.Services[0])
	}
	e.Report(Report{RevNAT: 1, Backend: 2})
	if _, next := e.Adjust(in, ids{}, t0.Add(40*time.Second)); !next.Equal(t0.Add(100 * time.Second)) {
		t.Errorf("second ejection ends %v, want +60s from its start", next.Sub(t0.Add(40*time.Second)))
	}
}

func TestReportsThatDoNotEject(t *testing.T) {
	for name, tc := range map[string]struct {
		report Report
		mod    func(*lb.Service)
	}{
		"unknown frontend":      {Report{RevNAT: 7, Backend: 2}, nil},
		"unknown backend":       {Report{RevNAT: 1, Backend: 42}, nil},
		"not a member":          {Report{RevNAT: 1, Backend: 5}, nil},
		"annotation off":        {Report{RevNAT: 1, Backend: 2}, func(s *lb.Service) { s.OutlierDetection = false }},
		"frontend not in state": {Report{RevNAT: 1, Backend: 2}, func(s *lb.Service) { s.Frontend.Port = 81 }},
	} {
		t.Run(name, func(t *testing.T) {
			e := started(Options{Config: outlier.DefaultConfig})
			e.Report(tc.report)
			out, next := e.Adjust(state(3, tc.mod), ids{}, t0)
			if len(out.Services[0].Backends) != 3 || !next.IsZero() {
				t.Errorf("backends %v, next %v; want all 3 and no wake-up", out.Services[0].Backends, next)
			}
		})
	}
}

// Two of three failing at the default 50 %: one ejected, one kept.
func TestMaxShareKeepsTraffic(t *testing.T) {
	e := started(Options{Config: outlier.DefaultConfig})
	e.Report(Report{RevNAT: 1, Backend: 1})
	e.Report(Report{RevNAT: 1, Backend: 2})
	out, _ := e.Adjust(state(3, nil), ids{}, t0)
	if n := len(out.Services[0].Backends); n != 2 {
		t.Errorf("%d backends left, want 2 (one ejected, one kept by the 50 %% bound)", n)
	}
}

// A backend that leaves the Service is forgotten and its record deleted.
func TestForgetsBackendsThatLeft(t *testing.T) {
	store := maps.NewFake()
	e := started(Options{Config: outlier.DefaultConfig, Store: store})
	e.Report(Report{RevNAT: 1, Backend: 2})
	e.Adjust(state(3, nil), ids{}, t0)
	e.Adjust(state(1, nil), ids{}, t0.Add(forgetEvery))
	if rec, _ := store.Ejections(); len(rec) != 0 {
		t.Errorf("record after the backend left: %v, want none", rec)
	}
	if out, _ := e.Adjust(state(3, nil), ids{}, t0.Add(forgetEvery+time.Second)); len(out.Services[0].Backends) != 3 {
		t.Error("a backend that left and came back is still ejected")
	}
}

// A Service that turns detection off takes its backends back at once, and
// the ejection is no longer listed: nothing leaves the backend out. Its
// ejection time runs on if detection comes back before it ends.
func TestDetectionTurnedOffListsNothing(t *testing.T) {
	e := started(Options{Config: outlier.DefaultConfig})
	e.Report(Report{RevNAT: 1, Backend: 2})
	if e.Adjust(state(3, nil), ids{}, t0); len(e.Ejected()) != 1 {
		t.Fatalf("ejected %+v, want backend 2", e.Ejected())
	}
	off := func(s *lb.Service) { s.OutlierDetection = false }
	out, _ := e.Adjust(state(3, off), ids{}, t0.Add(time.Second))
	if len(out.Services[0].Backends) != 3 || len(e.Ejected()) != 0 {
		t.Errorf("detection off: %d backends, ejected %+v; want 3 and none", len(out.Services[0].Backends), e.Ejected())
	}
	out, _ = e.Adjust(state(3, nil), ids{}, t0.Add(2*time.Second))
	if len(out.Services[0].Backends) != 2 || len(e.Ejected()) != 1 || len(e.Ejected()[0].Services) != 1 {
		t.Errorf("detection back on within the ejection time: %d backends, ejected %+v; want 2 and backend 2", len(out.Services[0].Backends), e.Ejected())
	}
}

// started is New after the first sync has been written.
func started(opts Options) *Ejector {
	e := New(opts)
	e.Applied(nil)
	return e
}

// Reports that arrive before the first sync is written wait for it: the
// reconciler cannot resolve their ids yet.
func TestReportsWaitForTheFirstWrite(t *testing.T) {
	triggered := 0
	e := New(Options{Config: outlier.DefaultConfig, Trigger: func() { triggered++ }})
	e.Report(Report{RevNAT: 1, Backend: 2})
	if out, _ := e.Adjust(state(3, nil), ids{}, t0); len(out.Services[0].Backends) != 3 {
		t.Fatal("a report was decided before the first write")
	}
	e.Applied(nil)
	if triggered != 2 {
		t.Errorf("%d triggers, want the report's and one after the first write", triggered)
	}
	if out, _ := e.Adjust(state(3, nil), ids{}, t0); len(out.Services[0].Backends) != 2 {
		t.Error("the waiting report was not decided after the first write")
	}
}

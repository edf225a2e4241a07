package outlier

import (
	"net/netip"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/lb"
)

var (
	svc = types.NamespacedName{Namespace: "ns", Name: "web"}
	t0  = time.Unix(1000, 0)
)

func backends(n int) []lb.Backend {
	var out []lb.Backend
	for i := 1; i <= n; i++ {
		out = append(out, lb.Backend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), Port: 8080})
	}
	return out
}

func state(bs []lb.Backend) lb.State {
	return lb.State{Services: []lb.Service{{Name: svc, Backends: bs, OutlierDetection: true,
		Frontend: lb.Frontend{Addr: netip.MustParseAddr("198.19.0.10"), Port: 80, Proto: lb.TCP}}}}
}

func TestEjectionTimeGrowsAndIsCapped(t *testing.T) {
	cfg := Config{BaseEjection: 30 * time.Second, MaxEjection: 100 * time.Second, MaxShare: 0.5}
	d := New(cfg)
	bs := backends(3)
	k := bs[0]
	now := t0
	for i, want := range []time.Duration{30 * time.Second, 60 * time.Second, 90 * time.Second, 100 * time.Second, 100 * time.Second} {
		until, ok := d.Failed(k, bs, now)
		if !ok || until.Sub(now) != want {
			t.Fatalf("ejection %d: until %v (%v), want %v", i+1, until.Sub(now), ok, want)
		}
		// Reported again while ejected: nothing changes.
		if again, ok := d.Failed(k, bs, now.Add(time.Second)); ok || !again.Equal(until) {
			t.Fatalf("ejection %d: a report while ejected ejected again (%v, %v)", i+1, again, ok)
		}
		now = until.Add(time.Second)
	}
}

func TestMaxShare(t *testing.T) {
	for _, tc := range []struct {
		n, share100, want int
	}{
		{1, 50, 0}, {2, 50, 1}, {3, 50, 1}, {4, 50, 2}, {5, 50, 2}, {10, 10, 1}, {3, 100, 2}, {1, 100, 0}, {3, 0, 0},
	} {
		d := New(Config{BaseEjection: time.Second, MaxEjection: time.Minute, MaxShare: float64(tc.share100) / 100})
		bs := backends(tc.n)
		got := 0
		for _, b := range bs {
			if _, ok := d.Failed(b, bs, t0); ok {
				got++
			}
		}
		if got != tc.want {
			t.Errorf("%d backends, max %d%%: %d ejected, want %d", tc.n, tc.share100, got, tc.want)
		}
		if left := d.Apply(state(bs), t0).Services[0].Backends; len(left) != tc.n-tc.want {
			t.Errorf("%d backends, max %d%%: %d left after Apply, want %d", tc.n, tc.share100, len(left), tc.n-tc.want)
		}
	}
}

func TestApplyLeavesOutEjectedUntilTheyReturn(t *testing.T) {
	d := New(DefaultConfig)
	bs := backends(3)
	in := state(bs)
	until, ok := d.Failed(bs[1], bs, t0)
	if !ok {
		t.Fatal("not ejected")
	}
	got := d.Apply(in, t0.Add(time.Second)).Services[0].Backends
	if len(got) != 2 || got[0] != bs[0] || got[1] != bs[2] {
		t.Errorf("after the ejection: %v, want %v and %v", got, bs[0], bs[2])
	}
	if len(in.Services[0].Backends) != 3 {
		t.Errorf("Apply changed its input: %v", in.Services[0].Backends)
	}
	if ej := d.Apply(in, t0.Add(time.Second)).Services[0].Ejected; len(ej) != 1 || ej[0] != bs[1] {
		t.Errorf("Ejected = %v, want %v", ej, bs[1])
	}
	offIn := state(bs)
	offIn.Services[0].OutlierDetection = false
	if off := d.Apply(offIn, t0).Services[0].Backends; len(off) != 3 {
		t.Errorf("with ejection off for the Service: %v, want all 3", off)
	}
	udp := state(bs)
	udp.Services[0].Frontend.Proto = lb.UDP
	if u := d.Apply(udp, t0).Services[0].Backends; len(u) != 3 {
		t.Errorf("a UDP frontend: %v, want all 3 (failures are learnt from TCP)", u)
	}
	if next, ok := d.Next(t0); !ok || !next.Equal(until) {
		t.Errorf("Next = %v %v, want %v", next, ok, until)
	}
	if back := d.Apply(in, until).Services[0].Backends; len(back) != 3 {
		t.Errorf("at the ejection's end: %v, want all 3", back)
	}
	if _, ok := d.Next(until); ok {
		t.Error("Next reports an ejection after the last one ended")
	}
}

// A frontend that lost backends since the ejections keeps no more than
// its share out, the earliest ejected first.
func TestApplyHoldsTheShareWhenTheSetShrinks(t *testing.T) {
	d := New(DefaultConfig)
	bs := backends(4)
	d.Failed(bs[2], bs, t0)
	d.Failed(bs[0], bs, t0.Add(time.Second))
	got := d.Apply(state(bs[:3]), t0.Add(2*time.Second)).Services[0].Backends
	if len(got) != 2 || got[0] != bs[0] || got[1] != bs[1] {
		t.Errorf("3 backends left, 2 ejected: %v, want %v and %v (the earliest ejection kept)", got, bs[0], bs[1])
	}
}

func TestFailedIgnoresNonMembers(t *testing.T) {
	d := New(DefaultConfig)
	bs := backends(3)
	if _, ok := d.Failed(backends(4)[3], bs, t0); ok {
		t.Error("a backend that is not a member was ejected")
	}
}

func TestForget(t *testing.T) {
	d := New(Config{BaseEjection: time.Second, MaxEjection: 10 * time.Second, MaxShare: 0.5})
	bs := backends(3)
	k := bs[0]
	until, _ := d.Failed(k, bs, t0)
	all := func(lb.Backend) bool { return true }
	d.Forget(until.Add(9*time.Second), all)
	if until2, _ := d.Failed(k, bs, until.Add(9*time.Second)); until2.Sub(until.Add(9*time.Second)) != 2*time.Second {
		t.Errorf("second ejection lasts %v, want 2s", until2.Sub(until.Add(9*time.Second)))
	}
	d.Forget(t0.Add(time.Hour), all)
	if u, _ := d.Failed(k, bs, t0.Add(time.Hour)); u.Sub(t0.Add(time.Hour)) != time.Second {
		t.Errorf("after MaxEjection back, the ejection lasts %v, want the base 1s", u.Sub(t0.Add(time.Hour)))
	}
	// A backend that left its Service is forgotten, ejected or not.
	d.Forget(t0.Add(time.Hour), func(lb.Backend) bool { return false })
	if len(d.Ejected(t0.Add(time.Hour))) != 0 {
		t.Error("a backend that left its Service is still ejected")
	}
}

func TestEntriesRestore(t *testing.T) {
	d := New(DefaultConfig)
	bs := backends(3)
	until, _ := d.Failed(bs[0], bs, t0)
	e := New(DefaultConfig)
	for b, en := range d.Entries() {
		e.Restore(b, en, t0)
	}
	if u, ok := e.EjectedUntil(bs[0], t0); !ok || !u.Equal(until) {
		t.Fatalf("restored: %v %v, want %v", u, ok, until)
	}
	// The multiplier came along: the next ejection lasts twice as long.
	if u, _ := e.Failed(bs[0], bs, until); u.Sub(until) != 60*time.Second {
		t.Errorf("second ejection after restore lasts %v, want 60s", u.Sub(until))
	}
}

// A restored ejection never lasts beyond MaxEjection from now.
func TestRestoreClampsToMaxEjection(t *testing.T) {
	d := New(DefaultConfig)
	b := backends(1)[0]
	d.Restore(b, Entry{Ejections: 1, At: t0, Until: t0.Add(time.Hour)}, t0)
	if u, _ := d.EjectedUntil(b, t0); !u.Equal(t0.Add(DefaultConfig.MaxEjection)) {
		t.Errorf("restored until %v, want %v", u.Sub(t0), DefaultConfig.MaxEjection)
	}
}

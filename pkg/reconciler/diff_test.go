package reconciler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// modelStep changes a few frontends of prev as lb.Computer does: the list
// stays sorted with one Service per frontend, the others keep their very
// values, and it returns the frontends it touched, as Computer.Changed.
func modelStep(rng *rand.Rand, prev lb.State) (lb.State, []lb.Frontend) {
	vips := []string{"198.19.0.1", "198.19.0.2", "198.19.0.3", "198.19.0.4", "fd00::10"}
	bes4 := []string{"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:8080"}
	bes6 := []string{"[fd00::1]:80", "[fd00::2]:80"}
	oneOf := func(s []string) string { return s[rng.IntN(len(s))] }
	random := func(fe *lb.Frontend) lb.Service {
		vip := oneOf(vips)
		if fe != nil {
			vip = fe.Addr.String()
		}
		pool := bes4
		if rng.IntN(20) == 0 || vip == "fd00::10" {
			pool = bes6
		}
		var backends []string
		for _, b := range pool {
			if rng.IntN(2) == 0 {
				backends = append(backends, b)
			}
		}
		if rng.IntN(20) == 0 {
			backends = append(backends, oneOf(bes6)) // mixed family: rejected
		}
		s := svc(vip, uint16(80+rng.IntN(3)), []lb.Proto{lb.TCP, lb.UDP}[rng.IntN(2)], oneOf([]string{"a", "b", "c"}), backends...)
		if fe != nil {
			s.Frontend = *fe
		}
		s.Kind = lb.FrontendKind(rng.IntN(4))
		s.AffinityTimeout = time.Duration(rng.IntN(2)) * time.Hour
		return s
	}
	next := slices.Clone(prev.Services)
	var touched []lb.Frontend
	for range rng.IntN(4) {
		switch i := rng.IntN(len(next) + 1); {
		case i == len(next) || rng.IntN(4) == 0:
			s := random(nil)
			touched = append(touched, s.Frontend)
			next = append(next, s)
		case rng.IntN(3) == 0:
			touched = append(touched, next[i].Frontend)
			next = slices.Delete(next, i, i+1)
		case rng.IntN(2) == 0:
			// Touched, and made again the same: Changed may list a
			// frontend whose Service did not change.
			touched = append(touched, next[i].Frontend)
			next[i].Backends = slices.Clone(next[i].Backends)
		default:
			touched = append(touched, next[i].Frontend)
			next[i] = random(&next[i].Frontend)
		}
	}
	slices.SortStableFunc(next, func(a, b lb.Service) int { return a.Frontend.Compare(b.Frontend) })
	next = slices.CompactFunc(next, func(a, b lb.Service) bool { return a.Frontend == b.Frontend })
	slices.SortFunc(touched, lb.Frontend.Compare)
	return lb.State{Services: next}, slices.Compact(touched)
}

// TestApplyChangedMatchesApply drives two reconcilers through the same
// model-like states, one with ApplyChanged and the list of changed
// frontends, the other with Apply, with maps that are sometimes too small
// (the same history for both) and writes that sometimes fail (with room
// for all): their maps must serve alike after every
// sync, and ApplyChanged must have looked at the changed frontends only
// when it could.
func TestApplyChangedMatchesApply(t *testing.T) {
	errInjected := errors.New("injected fault")
	targeted := 0
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 3))
		capacity := maps.Capacity{}
		if seed%3 == 0 {
			capacity = maps.Capacity{Services: 12 + rng.IntN(12), Members: 10 + rng.IntN(10)}
		}
		f, g := maps.NewFakeWithCapacity(capacity), maps.NewFakeWithCapacity(capacity)
		faulty := maps.NewFaulty(f, nil)
		r, ref := New(faulty, nil), New(g, nil)
		var st lb.State
		all := true
		for step := range 300 {
			var changed []lb.Frontend
			st, changed = modelStep(rng, st)
			// With room for all, a failed write leaves nothing that a
			// later sync does not repair; without, what has room depends
			// on what the maps held, so both must have the same history.
			if capacity == (maps.Capacity{}) && rng.IntN(8) == 0 {
				n, calls := 1+rng.IntN(6), 0
				faulty.SetFail(func(op maps.Op) error {
					if calls++; calls == n {
						return fmt.Errorf("%s: %w", op, errInjected)
					}
					return nil
				})
				_, err := r.ApplyChanged(st, changed, all)
				faulty.SetFail(nil)
				if err != nil && !errors.Is(err, errInjected) {
					t.Fatalf("seed %d step %d: %v", seed, step, err)
				}
				// As the Syncer: after a failure the model starts over.
				all = err != nil
				changed = nil // the state is the same again
			}
			if !all && r.restored && r.complete && r.overs == 0 {
				targeted++
			}
			stats, err := r.ApplyChanged(st, changed, all)
			if err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			all = false
			refStats, err := ref.Apply(st)
			if err != nil {
				t.Fatalf("seed %d step %d: reference: %v", seed, step, err)
			}
			if got, want := dump(t, f), dump(t, g); got != want {
				t.Fatalf("seed %d step %d: ApplyChanged's maps\n%s\nApply's maps\n%s", seed, step, got, want)
			}
			if got, want := vipsOf(t, f), vipsOf(t, g); !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: cluster IPs %v, Apply's %v", seed, step, got, want)
			}
			if stats.Services != refStats.Services || stats.Backends != refStats.Backends ||
				stats.Skipped != refStats.Skipped || len(stats.OverCapacity) != len(refStats.OverCapacity) {
				t.Fatalf("seed %d step %d: stats %+v, Apply's %+v", seed, step, stats, refStats)
			}
		}
	}
	t.Logf("%d syncs looked at the changed frontends alone", targeted)
	if targeted < 1000 {
		t.Errorf("only %d syncs looked at the changed frontends alone", targeted)
	}
}

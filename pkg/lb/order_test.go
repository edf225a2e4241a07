package lb

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// t0 is a creation time; the API server writes whole seconds.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// createdAt sets metadata.creationTimestamp; the zero time leaves it unset.
func createdAt(at time.Time) func(*corev1.Service) {
	return func(s *corev1.Service) { s.CreationTimestamp = metav1.NewTime(at) }
}

// inNamespace moves an object to namespace ns.
func inNamespace[T metav1.Object](ns string) func(T) {
	return func(o T) { o.SetNamespace(ns) }
}

// finding8Input is two Services claiming 10.96.0.10:80/TCP: zz/old,
// created at t0, and aa/new, created a second later, whose name sorts
// first. Each has a slice with a backend of its own.
func finding8Input() (old, young *corev1.Service, oldEps, youngEps *discoveryv1.EndpointSlice) {
	old = mod(svc("old", ips("10.96.0.10"), http80), with(inNamespace[*corev1.Service]("zz"), createdAt(t0)))
	young = mod(svc("new", ips("10.96.0.10"), http80), with(inNamespace[*corev1.Service]("aa"), createdAt(t0.Add(time.Second))))
	oldEps = mod(v4("old-1", "old", http8080, ready("10.0.0.1")), inNamespace[*discoveryv1.EndpointSlice]("zz"))
	youngEps = mod(v4("new-1", "new", http8080, ready("10.0.0.2")), inNamespace[*discoveryv1.EndpointSlice]("aa"))
	return old, young, oldEps, youngEps
}

// computeBoth runs Compute and a Computer on in and fails unless they agree.
func computeBoth(t *testing.T, c *Computer, in Input) (State, []Warning) {
	t.Helper()
	want, wantWarns := Compute(in)
	checkOutput(t, want, wantWarns)
	got, gotWarns := c.Compute(in)
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
		t.Fatalf("Computer and Compute differ:\ngot:  %q\n      %q\nwant: %q\n      %q", render(got), gotWarns, render(want), wantWarns)
	}
	return want, wantWarns
}

// TestFinding8NewDuplicateVIPLosesToOlder: a Service created later with
// the cluster IP and port of a live one does not take the frontend from it,
// whatever the names, in Compute and in a Computer, whichever it sees first.
func TestFinding8NewDuplicateVIPLosesToOlder(t *testing.T) {
	old, young, oldEps, youngEps := finding8Input()
	const (
		oldWins   = "10.96.0.10:80/TCP zz/old[http] -> 10.0.0.1:8080"
		youngWins = "10.96.0.10:80/TCP aa/new[http] -> 10.0.0.2:8080"
	)
	both := Input{Services: []*corev1.Service{old, young}, EndpointSlices: []*discoveryv1.EndpointSlice{oldEps, youngEps}}
	for _, in := range []Input{both, reversed(both)} {
		st, _ := Compute(in)
		if got := render(st); !slices.Equal(got, []string{oldWins}) {
			t.Errorf("Compute: got %q, want %q", got, oldWins)
		}
	}

	onlyOld := Input{Services: []*corev1.Service{old}, EndpointSlices: []*discoveryv1.EndpointSlice{oldEps}}
	onlyYoung := Input{Services: []*corev1.Service{young}, EndpointSlices: []*discoveryv1.EndpointSlice{youngEps}}
	for _, tt := range []struct {
		name  string
		steps []Input
		want  []string // the one frontend after each step; "" for none
	}{
		{"old first, then new", []Input{onlyOld, both, onlyOld}, []string{oldWins, oldWins, oldWins}},
		{"new first, then old", []Input{onlyYoung, both, onlyYoung}, []string{youngWins, oldWins, youngWins}},
		{"the older is deleted", []Input{both, onlyYoung, both}, []string{oldWins, youngWins, oldWins}},
		{"both in one call, then none", []Input{reversed(both), {}}, []string{oldWins, ""}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := NewComputer()
			for i, in := range tt.steps {
				st, _ := computeBoth(t, c, in)
				var want []string
				if tt.want[i] != "" {
					want = []string{tt.want[i]}
				}
				if got := render(st); !slices.Equal(got, want) {
					t.Errorf("step %d: got %q, want %q", i, got, want)
				}
			}
		})
	}
}

// TestFinding8DuplicateWarningNamesBoth: the warning is the losing
// Service's, and it names the frontend and the winner; the winner, whose
// frontends are all programmed, gets none.
func TestFinding8DuplicateWarningNamesBoth(t *testing.T) {
	old, young, oldEps, youngEps := finding8Input()
	in := Input{Services: []*corev1.Service{old, young}, EndpointSlices: []*discoveryv1.EndpointSlice{oldEps, youngEps}}
	c := NewComputer()
	computeBoth(t, c, Input{Services: []*corev1.Service{old}})
	_, warns := computeBoth(t, c, in)
	want := []Warning{{"aa/new", `port "http": frontend 10.96.0.10:80/TCP is also claimed by zz/old port "http" (created earlier); this Service's frontend is not programmed`}}
	if !slices.Equal(warns, want) {
		t.Errorf("got  %q\nwant %q", warns, want)
	}
}

// TestFinding8TieRule covers the rest of the rule: the earlier creation
// time, to the second as the API server records it, wins; a Service
// without one (objects from a file usually have none) loses to one with
// it; between times in the same second, or none, namespace/name decides.
func TestFinding8TieRule(t *testing.T) {
	var unset time.Time
	tests := []struct {
		name           string
		oldAt, youngAt time.Time // of zz/old and aa/new
		want           string    // the winner
		wantWarn       Warning
	}{
		{
			name: "earlier creation wins over name order", oldAt: t0, youngAt: t0.Add(time.Second), want: "zz/old",
			wantWarn: Warning{"aa/new", "also claimed by zz/old port \"http\" (created earlier)"},
		},
		{
			name: "within one second name order decides", oldAt: t0, youngAt: t0.Add(999 * time.Millisecond), want: "aa/new",
			wantWarn: Warning{"zz/old", "also claimed by aa/new port \"http\" (created in the same second, first by namespace/name)"},
		},
		{
			name: "same creation time: name order", oldAt: t0, youngAt: t0, want: "aa/new",
			wantWarn: Warning{"zz/old", "also claimed by aa/new port \"http\" (created in the same second, first by namespace/name)"},
		},
		{
			name: "no creation times, as in a file: name order", oldAt: unset, youngAt: unset, want: "aa/new",
			wantWarn: Warning{"zz/old", "also claimed by aa/new port \"http\" (neither has a creation time, first by namespace/name)"},
		},
		{
			name: "a creation time wins over none", oldAt: t0, youngAt: unset, want: "zz/old",
			wantWarn: Warning{"aa/new", "also claimed by zz/old port \"http\" (this Service has no creation time)"},
		},
		{
			name: "none loses to a creation time", oldAt: unset, youngAt: t0, want: "aa/new",
			wantWarn: Warning{"zz/old", "also claimed by aa/new port \"http\" (this Service has no creation time)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, young, _, _ := finding8Input()
			old.CreationTimestamp, young.CreationTimestamp = metav1.NewTime(tt.oldAt), metav1.NewTime(tt.youngAt)
			in := Input{Services: []*corev1.Service{old, young}}
			st, warns := computeBoth(t, NewComputer(), in)
			if len(st.Services) != 1 || st.Services[0].Name.String() != tt.want {
				t.Errorf("got %q, want %s to win", render(st), tt.want)
			}
			if !warningsMatch(warns, []Warning{tt.wantWarn}) {
				t.Errorf("got  %q\nwant %q", warns, tt.wantWarn)
			}
			if len(warns) == 1 && !strings.HasSuffix(warns[0].Reason, "; this Service's frontend is not programmed") {
				t.Errorf("warning does not say what happens: %q", warns[0].Reason)
			}
		})
	}
}

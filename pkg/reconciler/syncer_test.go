package reconciler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

type fakeSource struct {
	mu     sync.Mutex
	in     lb.Input
	synced bool
}

func (s *fakeSource) Input() lb.Input {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in
}

func (s *fakeSource) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func (s *fakeSource) set(in lb.Input, synced bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.in, s.synced = in, synced
}

func oneService() lb.Input {
	return lb.Input{Services: []*corev1.Service{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "198.19.0.10",
			ClusterIPs: []string{"198.19.0.10"},
			Ports:      []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSyncerWaitsForSourcesThenRetriesFailures(t *testing.T) {
	f := maps.NewFake()
	var failing atomic.Bool
	failing.Store(true)
	faulty := maps.NewFaulty(f, func(op maps.Op) error {
		if failing.Load() && op == maps.OpPublishService {
			return errors.New("injected")
		}
		return nil
	})
	var attempts, failures atomic.Int32
	src := &fakeSource{}
	s := NewSyncer(New(faulty, nil), []Source{src}, SyncerOptions{
		MinInterval: time.Millisecond,
		RetryBase:   time.Millisecond,
		RetryMax:    10 * time.Millisecond,
		OnSync: func(_ time.Duration, _ Stats, err error) {
			attempts.Add(1)
			if err != nil {
				failures.Add(1)
			}
		},
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	// Not synced: even when triggered, nothing may be written.
	src.set(oneService(), false)
	s.Trigger()
	time.Sleep(50 * time.Millisecond)
	if n := attempts.Load(); n != 0 || s.HasSynced() {
		t.Fatalf("synced %d times before the source had synced", n)
	}

	src.set(oneService(), true)
	s.Trigger()
	waitFor(t, "failed syncs to be retried", func() bool { return failures.Load() >= 3 })
	if s.HasSynced() {
		t.Fatal("HasSynced before any sync succeeded")
	}
	failing.Store(false)
	waitFor(t, "a successful sync", s.HasSynced)
	if svc, _ := f.Len(); svc != 1 {
		t.Fatalf("service map holds %d entries, want 1 (an empty service entry)", svc)
	}
}

// TestSyncerBurstOfTriggersSyncsPromptly: a thousand triggers (an informer
// listing a thousand objects) give a prompt sync, not one delayed by a
// thousand rate-limit slots.
func TestSyncerBurstOfTriggersSyncsPromptly(t *testing.T) {
	f := maps.NewFake()
	src := &fakeSource{}
	var syncs atomic.Int32
	s := NewSyncer(New(f, nil), []Source{src}, SyncerOptions{
		MinInterval: 100 * time.Millisecond, Burst: 2,
		OnSync: func(time.Duration, Stats, error) { syncs.Add(1) },
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for range 1000 {
		s.Trigger()
	}
	src.set(oneService(), true)
	start := time.Now()
	s.Trigger()
	waitFor(t, "the first sync", s.HasSynced)
	if took := time.Since(start); took > time.Second {
		t.Errorf("first sync after a burst of triggers took %s", took)
	}
	// Bursts collapse: far fewer syncs than triggers.
	time.Sleep(300 * time.Millisecond)
	if n := syncs.Load(); n > 6 {
		t.Errorf("%d syncs for one burst of triggers", n)
	}
}

// adjustFunc is an Adjuster from a function.
type adjustFunc func(lb.State, IDs, time.Time) (lb.State, time.Time)

func (f adjustFunc) Adjust(s lb.State, ids IDs, now time.Time) (lb.State, time.Time) {
	return f(s, ids, now)
}

func (adjustFunc) Applied(error) {}

// TestSyncerAdjustsAndWakes: the Adjuster's state is what is written, the
// ids it gets resolve what was written, and the sync it asks for at a
// time comes by itself, however long the rate limit.
func TestSyncerAdjustsAndWakes(t *testing.T) {
	f := maps.NewFake()
	in := oneService()
	in.EndpointSlices = []*discoveryv1.EndpointSlice{sliceOf("web-a", "198.18.0.1", "198.18.0.2")}
	src := &fakeSource{}
	src.set(in, true)
	var calls atomic.Int32
	var sawFrontend atomic.Bool
	adjust := adjustFunc(func(s lb.State, ids IDs, now time.Time) (lb.State, time.Time) {
		n := calls.Add(1)
		if _, ok := ids.FrontendOf(1); ok {
			sawFrontend.Store(true)
		}
		out := lb.State{Services: append([]lb.Service(nil), s.Services...)}
		if n == 1 {
			// Leave the first backend out until a moment from now.
			out.Services[0].Ejected = out.Services[0].Backends[:1]
			out.Services[0].Backends = out.Services[0].Backends[1:]
			return out, now.Add(50 * time.Millisecond)
		}
		return out, time.Time{}
	})
	// The maps are read on the syncer's goroutine, after each sync.
	written := make([]atomic.Int32, 8)
	onSync := func(time.Duration, Stats, error) {
		n := calls.Load()
		if svcs, err := f.Services(); err == nil && len(svcs) == 1 && n < int32(len(written)) {
			written[n].Store(int32(len(svcs[0].Backends)))
		}
	}
	s := NewSyncer(New(f, nil), []Source{src}, SyncerOptions{MinInterval: time.Hour, Burst: 1, Adjuster: adjust, OnSync: onSync}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "first sync", s.HasSynced)
	if n := written[1].Load(); n != 1 {
		t.Fatalf("after the adjusted sync the frontend has %d backends, want 1", n)
	}
	// The rate limit is an hour; only the wake-up can bring the second sync.
	waitFor(t, "the sync the Adjuster asked for, with both backends back", func() bool { return written[2].Load() == 2 })
	if !sawFrontend.Load() {
		t.Error("the Adjuster's ids never resolved the written frontend")
	}
	// TriggerNow skips the hour-long limit too.
	before := calls.Load()
	s.TriggerNow()
	waitFor(t, "TriggerNow's sync", func() bool { return calls.Load() > before })
}

// TestSyncerLimitsUrgentSyncs: failure reports can call TriggerNow as fast
// as clients fail; the syncs that skip the rate limit have one of their
// own, and past it they wait for the normal one.
func TestSyncerLimitsUrgentSyncs(t *testing.T) {
	f := maps.NewFake()
	src := &fakeSource{}
	src.set(oneService(), true)
	var syncs atomic.Int32
	s := NewSyncer(New(f, nil), []Source{src}, SyncerOptions{MinInterval: time.Hour, Burst: 1,
		OnSync: func(time.Duration, Stats, error) { syncs.Add(1) }}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "first sync", s.HasSynced)
	start := time.Now()
	for time.Since(start) < 200*time.Millisecond {
		s.TriggerNow()
		time.Sleep(200 * time.Microsecond)
	}
	elapsed := time.Since(start)
	// The first sync, the burst, one per urgentEvery, and one in flight.
	limit := 1 + urgentBurst + int(elapsed/urgentEvery) + 1
	if n := int(syncs.Load()); n > limit {
		t.Errorf("%d syncs in %v of TriggerNow calls, want at most %d", n, elapsed, limit)
	} else {
		t.Logf("%d syncs in %v of TriggerNow calls (limit %d)", n, elapsed, limit)
	}
}

// TestReconcileWaitKeepsRereadsUnderTheirShare: full reconciliations come
// every interval while they are quick, and no more than their share of a
// core when they are slow.
func TestReconcileWaitKeepsRereadsUnderTheirShare(t *testing.T) {
	for _, tc := range []struct{ interval, took, want time.Duration }{
		{time.Minute, 0, time.Minute},
		{time.Minute, 300 * time.Millisecond, time.Minute},
		{time.Minute, 3 * time.Second, 5 * time.Minute},
		{time.Hour, 3 * time.Second, time.Hour},
	} {
		if got := reconcileWait(tc.interval, tc.took); got != tc.want {
			t.Errorf("reconcileWait(%s, %s) = %s, want %s", tc.interval, tc.took, got, tc.want)
		}
	}
}

package reconciler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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

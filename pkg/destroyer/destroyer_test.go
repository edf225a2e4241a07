package destroyer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/socklb/socklb/pkg/maps"
)

// TestFinding7EnqueueNeverBlocksAndPassesCoalesce: the writer's call
// returns at once while a pass is running, and the departures queued
// meanwhile are handled together in the next pass.
func TestFinding7EnqueueNeverBlocksAndPassesCoalesce(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var passes [][]maps.Departure
	started := make(chan struct{}, 10)
	d := New(Options{
		MinInterval: time.Millisecond,
		Destroy: func(_ context.Context, gone []maps.Departure) (int, error) {
			mu.Lock()
			passes = append(passes, gone)
			mu.Unlock()
			started <- struct{}{}
			<-release
			return len(gone), nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()
	d.Enqueue([]maps.Departure{{RevNATID: 1, Backend: 1}})
	<-started // the first pass is running and blocked
	enqueued := make(chan struct{})
	go func() {
		for i := range 100 {
			d.Enqueue([]maps.Departure{{RevNATID: 2, Backend: maps.BackendID(i)}})
		}
		close(enqueued)
	}()
	select {
	case <-enqueued:
	case <-time.After(10 * time.Second):
		t.Fatal("Enqueue blocked while a pass ran")
	}
	close(release)
	<-started
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(passes) != 2 || len(passes[0]) != 1 || len(passes[1]) != 100 {
		t.Fatalf("passes = %d (sizes %d, ...), want 2 passes of 1 and 100", len(passes), len(passes[0]))
	}
}

func TestQueueIsBoundedAndBatched(t *testing.T) {
	d := New(Options{MaxBatch: 10, MaxQueue: 25, Destroy: func(context.Context, []maps.Departure) (int, error) { return 0, nil }})
	for i := range 40 {
		d.Enqueue([]maps.Departure{{Backend: maps.BackendID(i)}})
	}
	if n := d.Pending(); n != 25 {
		t.Fatalf("pending = %d, want the bound 25", n)
	}
	batch, dropped := d.take()
	if len(batch) != 10 || dropped != 15 || batch[0].Backend != 15 {
		t.Fatalf("batch %d (first %d), dropped %d; want 10 from 15, 15 dropped", len(batch), batch[0].Backend, dropped)
	}
}

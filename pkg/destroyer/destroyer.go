// Package destroyer closes the sockets connected to backends that left
// their Service, as a job of its own beside the map writer: the writer
// only queues the departures of a sync (Enqueue never blocks), and passes
// over the node's sockets run here, coalesced, at a bounded rate and with
// a bounded batch, so a busy node's socket walk never delays a map write.
package destroyer

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/socklb/socklb/pkg/maps"
)

// Defaults of Options.
const (
	// DefaultMinInterval: a departure after a quiet second is handled at
	// once; under churn, passes come once a second, as kube-proxy clears
	// UDP conntrack entries once per sync (its min-sync-period is 1 s).
	// Every pass walks every namespace of the node: at 200 ms, 50 changes
	// a second at 10 000 Services spent a third of the agent's CPU there.
	DefaultMinInterval = time.Second
	// DefaultMaxBatch matches the departure map's size in bpf/socklb.c.
	DefaultMaxBatch = 65536
	// DefaultMaxQueue bounds the departures waiting for a pass.
	DefaultMaxQueue = 4 * DefaultMaxBatch
)

// Options configure a Destroyer.
type Options struct {
	// Destroy closes the sockets of one batch of departures and returns
	// how many it closed. Required.
	Destroy func(ctx context.Context, gone []maps.Departure) (int, error)
	// MinInterval is the least time between the starts of two passes.
	MinInterval time.Duration
	// MaxBatch bounds the departures of one pass.
	MaxBatch int
	// MaxQueue bounds the departures waiting; beyond it the oldest are
	// dropped (their sockets then live until they close or time out),
	// logged and counted.
	MaxQueue int
	// OnPass, if set, is called after each pass.
	OnPass func(destroyed int, err error)
	Logger *slog.Logger
}

// Destroyer queues departures and runs destruction passes.
type Destroyer struct {
	opts    Options
	log     *slog.Logger
	mu      sync.Mutex
	pending []maps.Departure
	dropped int
	kick    chan struct{}
}

// New returns a Destroyer; call Run to start it.
func New(opts Options) *Destroyer {
	if opts.MinInterval <= 0 {
		opts.MinInterval = DefaultMinInterval
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.MaxQueue < opts.MaxBatch {
		opts.MaxQueue = max(DefaultMaxQueue, opts.MaxBatch)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Destroyer{opts: opts, log: log, kick: make(chan struct{}, 1)}
}

// Enqueue adds departures for the next pass. It never blocks.
func (d *Destroyer) Enqueue(gone []maps.Departure) {
	if len(gone) == 0 {
		return
	}
	d.mu.Lock()
	d.pending = append(d.pending, gone...)
	if over := len(d.pending) - d.opts.MaxQueue; over > 0 {
		d.pending = append(d.pending[:0], d.pending[over:]...)
		d.dropped += over
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Pending returns how many departures wait for a pass.
func (d *Destroyer) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}

// take removes up to one batch from the queue.
func (d *Destroyer) take() (batch []maps.Departure, dropped int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(len(d.pending), d.opts.MaxBatch)
	batch = append([]maps.Departure(nil), d.pending[:n]...)
	d.pending = append(d.pending[:0], d.pending[n:]...)
	dropped, d.dropped = d.dropped, 0
	return batch, dropped
}

// Run runs passes until ctx is done.
func (d *Destroyer) Run(ctx context.Context) error {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		}
		// Departures that arrive while we wait join this pass.
		if wait := d.opts.MinInterval - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		last = time.Now()
		batch, dropped := d.take()
		if dropped > 0 {
			d.log.Warn("too many departed backends queued; their sockets are left to close by themselves",
				"dropped", dropped)
		}
		if len(batch) > 0 {
			n, err := d.opts.Destroy(ctx, batch)
			if d.opts.OnPass != nil {
				d.opts.OnPass(n, err)
			}
		}
		if d.Pending() > 0 {
			select {
			case d.kick <- struct{}{}:
			default:
			}
		}
	}
}

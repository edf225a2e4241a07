package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/socklb/socklb/pkg/destroyer"
	"github.com/socklb/socklb/pkg/ejection"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/metrics"
	"github.com/socklb/socklb/pkg/outlier"
	"github.com/socklb/socklb/pkg/reconciler"
)

// The jobs beside the writer: each runs in its own goroutine, so that none
// of them delays a map write.

// attachAfterFirstSync attaches the programs once the first sync has
// filled new maps. Until then the programs attached before (if any) keep
// serving from their own maps. A failure ends the agent.
func attachAfterFirstSync(ctx context.Context, dp *loader.Datapath, syncer *reconciler.Syncer, log *slog.Logger) error {
	if dp.Attached() {
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-syncer.Synced():
	}
	if err := dp.Attach(); err != nil {
		return fmt.Errorf("attach after the first sync: %w", err)
	}
	log.Info("programs attached after the first sync filled the maps")
	return nil
}

// checkDatapath compares the pins and links with what the agent made,
// every interval, and puts back what differs (a forced cleanup, a pin
// removed or replaced, a link detached with bpftool). It logs and counts
// what it repaired; status says what it could not.
func checkDatapath(ctx context.Context, dp *loader.Datapath, interval time.Duration, st *agentStatus,
	m *metrics.Sync, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st.setDatapathDrift(verifyAndRepair(dp, m, log))
	}
}

// verifyAndRepair runs one check and returns what is still wrong after
// the repair, "" when nothing is.
func verifyAndRepair(dp *loader.Datapath, m *metrics.Sync, log *slog.Logger) string {
	drift, err := dp.Verify()
	if err != nil {
		log.Error("check the datapath's pins and links", "error", err)
		return "check failed: " + err.Error()
	}
	if drift.Empty() {
		return ""
	}
	log.Warn("the datapath differs from what the agent pinned and attached; repairing",
		"drift", drift.Summary(), "items", drift.String())
	if err := dp.Repair(drift); err != nil {
		log.Error("repair the datapath", "error", err)
	}
	after, err := dp.Verify()
	if err != nil {
		log.Error("check the datapath after the repair", "error", err)
		return "check failed: " + err.Error()
	}
	for kind, n := range drift.CountByKind() {
		if !after.Empty() {
			n -= after.CountByKind()[kind]
		}
		m.Repaired(strings.ReplaceAll(string(kind), " ", "_"), n)
	}
	if !after.Empty() {
		log.Error("the datapath is still not as the agent made it", "drift", after.String())
		return after.Summary()
	}
	log.Info("datapath repaired", "repaired", drift.Summary())
	return ""
}

// newDestroyer closes, outside the sync, the sockets connected to backends
// that left their service: UDP always (a connected DNS client would stay
// pinned to a dead backend), TCP when configured. Passes are coalesced and
// rate-limited; the queue is bounded.
func newDestroyer(dp *loader.Datapath, c Config, m *metrics.Sync, log *slog.Logger) *destroyer.Destroyer {
	warned := false
	return destroyer.New(destroyer.Options{
		Destroy: func(_ context.Context, gone []maps.Departure) (int, error) {
			return dp.DestroySockets(gone, loader.DestroyOptions{TCP: c.DestroyTCP, Logger: log})
		},
		OnPass: func(n int, err error) {
			switch {
			case errors.Is(err, loader.ErrNoSockDestroy):
				m.DestroyPass("unsupported", n)
				if !warned {
					log.Warn("sockets of removed backends are left to time out", "reason", err)
					warned = true
				}
			case err != nil:
				m.DestroyPass("error", n)
				log.Error("destroy sockets of removed backends", "error", err, "destroyed", n)
			default:
				m.DestroyPass("ok", n)
				if n > 0 {
					log.Info("destroyed sockets of removed backends", "sockets", n)
				} else {
					log.Debug("no socket of the removed backends to destroy")
				}
			}
		},
		Logger: log,
	})
}

// newEjector returns the agent's outlier ejection and its metrics, or
// nils when the kernel cannot follow connect outcomes (the features
// logged at start say which part is missing). The ejector runs even when
// the default is off, for the Services whose annotation turns it on.
func newEjector(dp *loader.Datapath, c Config, reg prometheus.Registerer, trigger func(), log *slog.Logger) (*ejection.Ejector, reconciler.Adjuster) {
	var ejector *ejection.Ejector
	om := metrics.NewOutcomes(reg, maps.NewStats(&dp.Maps), func() []ejection.Ejected {
		if ejector == nil {
			return nil
		}
		return ejector.Ejected()
	}, log)
	if !dp.HasOutcomes() {
		log.Warn("this kernel cannot follow connect outcomes: no backend is ejected and least-connections picks at random")
		return nil, nil
	}
	ejector = ejection.New(ejection.Options{
		Config: outlier.Config{
			BaseEjection: c.OutlierBaseEjection, MaxEjection: c.OutlierMaxEjection,
			MaxShare: float64(c.OutlierMaxEjectionPercent) / 100,
		},
		Store:   maps.NewEjections(&dp.Maps),
		Trigger: trigger,
		OnEject: om.Ejection,
		Logger:  log.With("component", "outlier"),
	})
	return ejector, ejector
}

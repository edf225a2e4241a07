package ejection

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/pkg/maps"
)

// MaxEventAge is how old a failure report may be and still count. The
// ring buffer is pinned, so reports written while no agent ran wait for
// the next one; those from longer ago than an ejection would have lasted
// say nothing about the backend now.
const MaxEventAge = 30 * time.Second

// ReadEvents reads the datapath's ring buffer until ctx is done and
// passes every fresh failure report to report.
func ReadEvents(ctx context.Context, events *ebpf.Map, report func(Report), log *slog.Logger) error {
	rd, err := ringbuf.NewReader(events)
	if err != nil {
		return fmt.Errorf("read the outcome events: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	var rec ringbuf.Record
	stale := 0
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read the outcome events: %w", err)
		}
		r, age, err := decodeEvent(rec.RawSample)
		if err != nil {
			log.Warn("skipping an outcome event", "error", err)
			continue
		}
		if age > MaxEventAge {
			stale++
			if stale == 1 || rec.Remaining == 0 {
				log.Info("skipping failure reports older than the ejection time", "reports", stale, "max_age", MaxEventAge)
			}
			continue
		}
		report(r)
	}
}

// decodeEvent reads one struct outcome_event and how old it is.
func decodeEvent(raw []byte) (Report, time.Duration, error) {
	var ev socklb.BpfOutcomeEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &ev); err != nil {
		return Report{}, 0, fmt.Errorf("decode %d bytes: %w", len(raw), err)
	}
	if ev.Kind != uint32(socklb.BpfSocklbEventKindSOCKLB_EV_FAILURES) {
		return Report{}, 0, fmt.Errorf("unknown kind %d", ev.Kind)
	}
	now, err := maps.BootTime()
	if err != nil {
		return Report{}, 0, err
	}
	age := now - time.Duration(ev.TimeNs)
	return Report{RevNAT: maps.RevNATID(ev.RevNatId), Backend: maps.BackendID(ev.BackendId)}, age, nil
}

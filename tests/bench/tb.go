package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
)

// programTB lets the benchmark program use the test harnesses (cluster,
// sandbox, testagent), which take a testing.TB for cleanups and failures.
// Fatal panics with errFatal, which main recovers after running every
// cleanup, so nothing is left behind on a failure either.
type programTB struct {
	testing.TB // never set: methods the harnesses use are defined below
	log        *slog.Logger
	ctx        context.Context
	mu         sync.Mutex
	cleanups   []func()
	failed     bool
	tmp        string
}

type errFatal struct{ msg string }

func newProgramTB(ctx context.Context, log *slog.Logger) (*programTB, error) {
	tmp, err := os.MkdirTemp("", "socklb-bench-")
	if err != nil {
		return nil, err
	}
	return &programTB{log: log, ctx: ctx, tmp: tmp}, nil
}

func (p *programTB) Helper()                    {}
func (p *programTB) Name() string               { return "bench" }
func (p *programTB) Context() context.Context   { return p.ctx }
func (p *programTB) Log(args ...any)            { p.log.Info(fmt.Sprint(args...)) }
func (p *programTB) Logf(f string, args ...any) { p.log.Info(fmt.Sprintf(f, args...)) }
func (p *programTB) Error(args ...any) {
	p.markFailed()
	p.log.Error(fmt.Sprint(args...))
}
func (p *programTB) Errorf(f string, args ...any) {
	p.markFailed()
	p.log.Error(fmt.Sprintf(f, args...))
}
func (p *programTB) Fatal(args ...any) {
	p.markFailed()
	panic(errFatal{fmt.Sprint(args...)})
}
func (p *programTB) Fatalf(f string, args ...any) {
	p.markFailed()
	panic(errFatal{fmt.Sprintf(f, args...)})
}
func (p *programTB) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}
func (p *programTB) markFailed() {
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
}
func (p *programTB) TempDir() string {
	d, err := os.MkdirTemp(p.tmp, "t")
	if err != nil {
		p.Fatalf("temp dir: %v", err)
	}
	return d
}
func (p *programTB) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

// runCleanups runs every cleanup, last registered first, as testing does.
func (p *programTB) runCleanups() {
	p.mu.Lock()
	fs := p.cleanups
	p.cleanups = nil
	p.mu.Unlock()
	for _, f := range slices.Backward(fs) {
		func() {
			defer func() {
				if r := recover(); r != nil {
					p.log.Error("cleanup failed", "panic", r)
				}
			}()
			f()
		}()
	}
	os.RemoveAll(p.tmp)
}

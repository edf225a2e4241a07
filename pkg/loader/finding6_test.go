package loader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testlog"
)

func shortLockIntervals(t *testing.T) {
	t.Helper()
	retry, every := lockRetryInterval, lockLogInterval
	lockRetryInterval, lockLogInterval = 10*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { lockRetryInterval, lockLogInterval = retry, every })
}

// TestPrivilegedFinding6SecondAgentWaitsForLock: a second holder of the
// pin directory waits, saying who holds it, and proceeds once it is free.
func TestPrivilegedFinding6SecondAgentWaitsForLock(t *testing.T) {
	sandbox.RequirePrivileges(t)
	shortLockIntervals(t)
	dir := filepath.Join(sandbox.MountBPFFS(t), "socklb")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	first, err := AcquireLock(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if pid, held, err := LockHolder(dir); err != nil || !held || pid != os.Getpid() {
		t.Errorf("LockHolder = %d, %v, %v; want %d, true", pid, held, err, os.Getpid())
	}

	var (
		logs   testlog.Buffer
		second *Lock
	)
	type result struct {
		l   *Lock
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := AcquireLock(ctx, dir, slog.New(slog.NewTextHandler(&logs, nil)))
		done <- result{l, err}
	}()
	select {
	case r := <-done:
		r.l.Close()
		t.Fatalf("second AcquireLock returned while the first holds the lock: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	want := fmt.Sprintf(`level=WARN msg="pin directory is held by another agent; waiting" bpffs=%s holder_pid=%d`, dir, os.Getpid())
	if n := strings.Count(logs.String(), want); n < 2 {
		// Once at once, then every lockLogInterval.
		t.Errorf("logged %d times %q, want at least 2; log:\n%s", n, want, logs.String())
	}
	// Neither can a Prepare without a lock of its own, nor a cleanup.
	if dp, err := Prepare(Options{BPFFSPath: dir, CgroupPath: sandbox.NewCgroup(t).Path()}); !errors.Is(err, ErrInUse) {
		if err == nil {
			dp.Close()
		}
		t.Errorf("Prepare while locked: %v, want ErrInUse", err)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("second AcquireLock after the first closed: %v", r.err)
		}
		second = r.l
		defer second.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("second AcquireLock still waits after the first closed")
	}
	if _, held, _ := LockHolder(dir); !held {
		t.Error("LockHolder: not held while the second holds it")
	}

	// A cleanup removes the directory while it holds the lock: the
	// waiter then locks the directory made anew, not the removed one.
	var waiting testlog.Buffer
	go func() {
		l, err := AcquireLock(ctx, dir, slog.New(slog.NewTextHandler(&waiting, nil)))
		done <- result{l, err}
	}()
	for !strings.Contains(waiting.String(), "waiting") { // it waits on the old directory now
		select {
		case r := <-done:
			t.Fatalf("AcquireLock returned while the second holds the lock: %v", r.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	second.Close()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("AcquireLock after the directory was removed: %v", r.err)
		}
		defer r.l.Close()
		if same, err := sameInode(r.l.f, dir); err != nil || !same {
			t.Errorf("the lock is not on the directory at %s (%v)", dir, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AcquireLock still waits after the directory was removed and freed")
	}

	// A waiter gives up when its context ends.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if l, err := AcquireLock(short, dir, nil); !errors.Is(err, context.DeadlineExceeded) {
		l.Close()
		t.Errorf("AcquireLock with an ended context: %v, want DeadlineExceeded", err)
	}
}

// TestPrivilegedFinding6CleanupRefusesWhileLocked: cleanup refuses while
// an agent holds the pins, naming it; with force it detaches, and the
// agent sees it in Verify and puts it back with Repair.
func TestPrivilegedFinding6CleanupRefusesWhileLocked(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)
	dp := mustLoad(t, opts) // holds the lock until Close
	defer dp.Close()

	err := Cleanup(dir, nil)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("cleanup while an agent runs: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	if len(attachedPrograms(t, cg.Path())) != 1 {
		t.Fatal("a refused cleanup detached connect4")
	}
	if drift, err := dp.Verify(); err != nil || !drift.Empty() {
		t.Fatalf("Verify after a refused cleanup: %v, %v", drift, err)
	}

	var logs bytes.Buffer
	if err := CleanupWithOptions(dir, CleanupOptions{Force: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatalf("forced cleanup: %v", err)
	}
	if !strings.Contains(logs.String(), "agent_pid="+strconv.Itoa(os.Getpid())) {
		t.Errorf("forced cleanup did not name the running agent:\n%s", logs.String())
	}
	if len(attachedPrograms(t, cg.Path())) != 0 {
		t.Fatal("forced cleanup left connect4 attached")
	}
	drift, err := dp.Verify()
	if err != nil {
		t.Fatal(err)
	}
	kinds := drift.CountByKind()
	if kinds[DriftLinkDetached] != len(dp.links) || kinds[DriftMapPinMissing] != len(dp.pinnedMaps) {
		t.Fatalf("Verify after a forced cleanup: %v", drift)
	}
	if want := fmt.Sprintf("%d link detached", len(dp.links)); !strings.Contains(drift.Summary(), want) {
		t.Errorf("Summary %q does not say %q", drift.Summary(), want)
	}
	if err := dp.Repair(drift); err != nil {
		t.Fatalf("repair: %v", err)
	}
	if drift, err := dp.Verify(); err != nil || !drift.Empty() {
		t.Errorf("Verify after Repair: %v, %v", drift, err)
	}
	if len(attachedPrograms(t, cg.Path())) != 1 {
		t.Error("connect4 is not attached after Repair")
	}
	dp.Close()
	if err := Cleanup(dir, nil); err != nil {
		t.Errorf("cleanup after the agent stopped: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after cleanup: %v", err)
	}
}

// TestPrivilegedFinding6RefusesForeignProgramsOnCgroup: a second pin
// directory cannot stack its programs on a cgroup the first one serves.
func TestPrivilegedFinding6RefusesForeignProgramsOnCgroup(t *testing.T) {
	opts, cg, dirA := privilegedOptions(t)
	dpA := mustLoad(t, opts)
	dpA.Close()

	dirB := filepath.Join(filepath.Dir(dirA), "other")
	t.Cleanup(func() { _ = Cleanup(dirB, nil) })
	dp, err := Prepare(Options{BPFFSPath: dirB, CgroupPath: cg.Path()})
	if !errors.Is(err, ErrForeignPrograms) {
		if err == nil {
			dp.Close()
		}
		t.Fatalf("Prepare with other pins on a served cgroup: %v, want ErrForeignPrograms", err)
	}
	for _, want := range []string{"sock4_connect", "cgroup/connect4", cg.Path()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %s: %v", want, err)
		}
	}
	if _, err := os.Stat(dirB); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused start left %s: %v", dirB, err)
	}
	if len(attachedPrograms(t, cg.Path())) != 1 {
		t.Error("the refused start changed connect4")
	}
	// The owner restarts as usual.
	dp = mustPrepare(t, opts)
	if !dp.MapsInUse() {
		t.Error("restart of the owner: maps not in use")
	}
}

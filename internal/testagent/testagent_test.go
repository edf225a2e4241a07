package testagent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
)

// helperEnv turns the test binary into a stand-in agent (see TestMain):
// "exit-on-term" exits 0 on SIGTERM, "ignore-term" ignores it.
const helperEnv = "SOCKLB_TESTAGENT_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
	case "exit-on-term":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		go func() { <-c; os.Exit(0) }()
	default:
		fmt.Fprintf(os.Stderr, "unknown $%s\n", helperEnv)
		os.Exit(2)
	}
	fmt.Println("helper ready")
	time.Sleep(time.Minute)
	os.Exit(3)
}

// recordingTB is the test's own testing.TB, except that it keeps the
// cleanups and failures Start registers, for the test to run and check.
type recordingTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	errs     []string
}

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}

func (r *recordingTB) Logf(string, ...any) {}

func (r *recordingTB) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func (r *recordingTB) errors() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

// TestPrivilegedFinding9StopFailsOnAnIgnoredSIGTERM: an agent that ignores
// SIGTERM is SIGKILLed when the test ends, and that fails the test with
// the agent's log; one that exits on SIGTERM passes; Kill(SIGKILL) kills
// on purpose without a failure. (Privileged: Start puts the child into
// the test's own cgroup, which takes root.)
func TestPrivilegedFinding9StopFailsOnAnIgnoredSIGTERM(t *testing.T) {
	sandbox.RequirePrivileges(t)
	start := func(t *testing.T, rec *recordingTB, mode string) *Agent {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"="+mode)
		a := Start(rec, cmd, nil)
		a.StopTimeout = 500 * time.Millisecond
		a.WaitLog(t, "helper ready", 10*time.Second)
		return a
	}

	t.Run("exits on SIGTERM", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		a := start(t, rec, "exit-on-term")
		rec.runCleanups()
		if errs := rec.errors(); errs != "" {
			t.Errorf("an agent that exits on SIGTERM failed the test: %s", errs)
		}
		if code := a.ExitCode(); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	})

	t.Run("ignores SIGTERM", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		a := start(t, rec, "ignore-term")
		if err := a.Stop(syscall.SIGTERM); !errors.Is(err, ErrIgnoredSignal) {
			t.Errorf("Stop(SIGTERM) = %v, want ErrIgnoredSignal", err)
		}
		select {
		case <-a.Done():
		default:
			t.Error("Stop returned while the agent still runs")
		}

		rec = &recordingTB{TB: t}
		start(t, rec, "ignore-term")
		rec.runCleanups()
		errs := rec.errors()
		if !strings.Contains(errs, ErrIgnoredSignal.Error()) || !strings.Contains(errs, "SIGKILLed") {
			t.Errorf("the test's cleanup did not fail on an agent that ignored SIGTERM: %q", errs)
		}

		rec = &recordingTB{TB: t}
		a = start(t, rec, "ignore-term")
		a.Kill(syscall.SIGTERM)
		if errs := rec.errors(); !strings.Contains(errs, ErrIgnoredSignal.Error()) || !strings.Contains(errs, "helper ready") {
			t.Errorf("Kill(SIGTERM) did not fail with the agent's log: %q", errs)
		}
	})

	t.Run("SIGKILL on purpose", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		a := start(t, rec, "ignore-term")
		a.Kill(syscall.SIGKILL)
		rec.runCleanups()
		if errs := rec.errors(); errs != "" {
			t.Errorf("Kill(SIGKILL) failed the test: %s", errs)
		}
		if code := a.ExitCode(); code != -1 {
			t.Errorf("exit code %d, want -1 (killed by a signal)", code)
		}
	})
}

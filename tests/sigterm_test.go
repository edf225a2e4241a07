package tests

import (
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/testagent"
)

// TestPrivilegedFinding9SIGTERMExitsZeroAndKeepsDatapath: an agent on a
// file source exits 0 within StopTimeout of SIGTERM, and the datapath
// outlives it: connects to the Service still reach its pods after the
// agent is gone (DESIGN.md, principle 6). The harness's cleanup then
// detaches everything.
func TestPrivilegedFinding9SIGTERMExitsZeroAndKeepsDatapath(t *testing.T) {
	e := newAgentEnv(t, servicesYAML(1, 2, 3))
	e.pods(t, 3, 8080)
	a := e.startAgent(t)
	a.WaitServing(t, 15*time.Second)

	pods := map[string]bool{"pod-1": true, "pod-2": true, "pod-3": true}
	connect := func(when string) {
		t.Helper()
		for range 30 {
			name, err := e.ask("198.19.0.10:80")
			if err != nil || !pods[name] {
				t.Fatalf("%s: connect to the Service: %q, %v", when, name, err)
			}
		}
	}
	connect("agent running")

	if err := a.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(testagent.StopTimeout):
		t.Fatalf("agent still runs %s after SIGTERM:\n%s", testagent.StopTimeout, a.Logs())
	}
	if code := a.ExitCode(); code != 0 {
		t.Fatalf("agent exited with %d after SIGTERM (%v), want 0:\n%s", code, a.Cmd.ProcessState, a.Logs())
	}

	connect("agent exited")
	if c := e.inspect(t)[webFE].Connects; c != 60 {
		t.Errorf("the maps count %d connects, want 60 (30 before and 30 after the agent exited)", c)
	}
}

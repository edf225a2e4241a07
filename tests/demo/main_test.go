package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/socklb/socklb/internal/sandbox"
)

// TestPrivilegedFinding8DemoFailsLoudlyWithoutBpftool: the README promises
// a bpftool dump; without bpftool the demo stops before it changes
// anything and says why, where it used to leave the dump out silently.
func TestPrivilegedFinding8DemoFailsLoudlyWithoutBpftool(t *testing.T) {
	sandbox.RequirePrivileges(t)
	bin := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build the demo: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--agent", "/nonexistent/socklb-agent")
	cmd.Env = []string{"PATH=" + t.TempDir()} // no bpftool on it
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bpftool is missing") {
		t.Fatalf("demo without bpftool: %v, want a failure naming bpftool\n%s", err, out)
	}
	if strings.Contains(string(out), "Cleaning up") {
		t.Errorf("the demo changed something before it found bpftool missing:\n%s", out)
	}
}

package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TestResult is the outcome of one test (or subtest).
type TestResult struct {
	Name    string
	Action  string // pass, fail or skip
	Elapsed time.Duration
	// Output is what the test printed, framing lines left out.
	Output []string
}

// PackageResult is one test binary's run on one kernel.
type PackageResult struct {
	ImportPath string
	// ExitCode is the binary's; -1 when it never finished.
	ExitCode int
	Tests    []TestResult
	// Raw is the binary's whole output.
	Raw []byte
}

// Failed reports a non-zero exit or a failed test.
func (p *PackageResult) Failed() bool {
	if p.ExitCode != 0 {
		return true
	}
	return slices.ContainsFunc(p.Tests, func(t TestResult) bool { return t.Action == "fail" })
}

// KernelResult is the suite's run on one kernel.
type KernelResult struct {
	// Name is what the kernel was asked for as ("6.1", "host").
	Name string
	// Release is the running kernel's uname -r.
	Release string
	// How says where it ran ("qemu TCG, 2 vCPUs, 256 MiB", "native").
	How string
	// Wall is the whole run, boot included; Boot until init spoke.
	Wall, Boot time.Duration
	Packages   []PackageResult
	// Problems are failures outside any test: a VM that timed out or
	// crashed, a module that did not load, a package that never ended.
	Problems []string
	// SkipMismatches are the skips that the kernel's list of expected
	// skips does not account for, and the listed ones that did not
	// happen (Suite.CheckSkips).
	SkipMismatches []SkipMismatch
	// Console is the end of the guest's kernel console, kept for problems.
	Console string
}

// Failed reports whether anything on this kernel failed: a problem, a
// package or test, or a skip that its list did not expect.
func (r *KernelResult) Failed() bool {
	return len(r.Problems) > 0 || len(r.SkipMismatches) > 0 || slices.ContainsFunc(r.Packages, func(p PackageResult) bool { return p.Failed() })
}

// Counts adds up the top-level tests that passed and failed (a subtest
// counts with its parent) and every test or subtest that was skipped: a
// skipped part of a passing test is worth a line of its own.
func (r *KernelResult) Counts() (passed, failed, skipped int) {
	for _, p := range r.Packages {
		for _, t := range p.Tests {
			top := !strings.Contains(t.Name, "/")
			switch {
			case t.Action == "skip":
				skipped++
			case t.Action == "pass" && top:
				passed++
			case t.Action == "fail" && top:
				failed++
			}
		}
	}
	return passed, failed, skipped
}

// guestOutput is the results port split at init's markers.
type guestOutput struct {
	release  string
	packages []PackageResult // ExitCode -1 until "end" is seen
	problems []string
	done     bool
}

// parseGuestOutput splits what init wrote to the results port: marker
// lines ("@@socklb-vm begin PKG", "end PKG CODE", …) and, between begin
// and end, the package's own output.
func parseGuestOutput(data []byte) guestOutput {
	var g guestOutput
	var cur *PackageResult
	for line := range bytes.Lines(data) {
		rest, ok := bytes.CutPrefix(line, []byte(marker+" "))
		if !ok {
			if cur != nil {
				cur.Raw = append(cur.Raw, line...)
			}
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "kernel" && len(f) == 2:
			g.release = f[1]
		case f[0] == "problem":
			g.problems = append(g.problems, strings.Join(f[1:], " "))
		case f[0] == "begin" && len(f) == 2:
			g.packages = append(g.packages, PackageResult{ImportPath: f[1], ExitCode: -1})
			cur = &g.packages[len(g.packages)-1]
		case f[0] == "end" && len(f) == 3 && cur != nil && cur.ImportPath == f[1]:
			code, err := strconv.Atoi(f[2])
			if err != nil {
				code = -1
			}
			cur.ExitCode = code
			cur = nil
		case f[0] == "done":
			g.done = true
		}
	}
	return g
}

// event is one line of `go tool test2json`.
type event struct {
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// Test2JSON turns a test binary's -test.v=test2json output into results,
// with `go tool test2json` (the host has Go; the guest does not).
func Test2JSON(ctx context.Context, raw []byte) ([]TestResult, error) {
	// -t: test2json reports elapsed times only in its timestamp mode.
	cmd := exec.CommandContext(ctx, "go", "tool", "test2json", "-t")
	cmd.Stdin = bytes.NewReader(raw)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go tool test2json: %w: %s", err, stderr.Bytes())
	}
	return parseEvents(out)
}

func parseEvents(out []byte) ([]TestResult, error) {
	var (
		results []TestResult
		output  = map[string][]string{}
	)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("test2json event %q: %w", sc.Text(), err)
		}
		if e.Test == "" {
			continue
		}
		switch e.Action {
		case "output":
			if framing(e.Output) {
				continue
			}
			output[e.Test] = append(output[e.Test], strings.TrimRight(e.Output, "\n"))
		case "pass", "fail", "skip":
			results = append(results, TestResult{
				Name: e.Test, Action: e.Action,
				Elapsed: time.Duration(e.Elapsed * float64(time.Second)),
				Output:  output[e.Test],
			})
			delete(output, e.Test)
		}
	}
	return results, sc.Err()
}

// framing reports the lines the test runner prints about a test, as
// opposed to what the test printed.
func framing(line string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- PASS", "--- FAIL", "--- SKIP"} {
		if strings.HasPrefix(strings.TrimSpace(line), p) {
			return true
		}
	}
	return false
}

// SkipReason is the last line a skipped test printed (its t.Skip message).
func (t *TestResult) SkipReason() string {
	for i := len(t.Output) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(t.Output[i]); s != "" {
			return s
		}
	}
	return "(no reason given)"
}

package vm

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// ExpectedSkip is a test that one kernel is known to skip, and the text
// its skip message must contain. A kernel runs with a list of these
// (Suite.ExpectedSkips): a skip the list lacks, a skip for another
// reason, and a listed skip that did not happen each fail the kernel.
// The VMs let a test skip on a missing feature at all
// (AllowMissingFeatures), so that list is what tells an old kernel's
// known gap from a probe that broke.
type ExpectedSkip struct {
	// Package is the test's package directory relative to the module
	// root, as Package.Rel ("tests", "pkg/loader").
	Package string
	// Test is the name `go test -v` prints: a subtest after its
	// parent, separated by "/", spaces as "_".
	Test string
	// Reason must occur in a line of the skipped test's output: the
	// feature the kernel lacks, as sandbox.RequireFeature names it.
	Reason string
}

// SkipMismatch is one difference between what a kernel skipped and its
// list of expected skips.
type SkipMismatch struct {
	// Package is the import path, Test the test's name.
	Package, Test string
	// Got is the skip message, or, for a listed skip that did not
	// happen, "passed", "failed" or "did not run".
	Got string
	// Want is the listed reason; empty for a skip the list lacks.
	Want string
	// Skipped says the test did skip (Got is its message).
	Skipped bool
}

func (m SkipMismatch) String() string {
	switch {
	case m.Skipped && m.Want == "":
		return fmt.Sprintf("unexpected skip: %s %s: %s (not in this kernel's list of expected skips)", m.Package, m.Test, m.Got)
	case m.Skipped:
		return fmt.Sprintf("skip for another reason: %s %s: %s (the list expects %q)", m.Package, m.Test, m.Got, m.Want)
	default:
		return fmt.Sprintf("expected skip did not happen: %s %s %s (the list expects a skip with %q)", m.Package, m.Test, m.Got, m.Want)
	}
}

// CheckSkips compares the skipped tests and subtests of r with want, the
// kernel's list, and returns every difference, in the results' order
// and then the list's. guest says r ran in a VM, where the tests of
// GuestSkip are left out. A listed test that did not run at all counts
// as a skip that did not happen (the list went stale: the test was
// renamed or lost its skip), unless it was not selected: its package is
// not in the suite, -test.run (Suite.Run) does not match it, or it is
// in GuestSkip; nor when its package never finished, which r already
// reports as a problem.
func (s *Suite) CheckSkips(r *KernelResult, want []ExpectedSkip, guest bool) []SkipMismatch {
	rel := map[string]string{}
	for _, p := range s.Packages {
		rel[p.ImportPath] = p.Rel
	}
	listed := func(pkg, test string) (ExpectedSkip, bool) {
		i := slices.IndexFunc(want, func(e ExpectedSkip) bool { return e.Package == rel[pkg] && e.Test == test })
		if i < 0 {
			return ExpectedSkip{}, false
		}
		return want[i], true
	}
	var out []SkipMismatch
	for _, p := range r.Packages {
		for _, t := range p.Tests {
			if t.Action != "skip" {
				continue
			}
			e, ok := listed(p.ImportPath, t.Name)
			if !ok {
				out = append(out, SkipMismatch{Package: p.ImportPath, Test: t.Name, Got: t.SkipReason(), Skipped: true})
			} else if !t.printed(e.Reason) {
				out = append(out, SkipMismatch{Package: p.ImportPath, Test: t.Name, Got: t.SkipReason(), Want: e.Reason, Skipped: true})
			}
		}
	}
	for _, e := range want {
		i := slices.IndexFunc(s.Packages, func(p Package) bool { return p.Rel == e.Package })
		if i < 0 || !selected(s.Run, e.Test) {
			continue
		}
		top, _, _ := strings.Cut(e.Test, "/")
		if _, left := s.GuestSkip[top]; guest && left {
			continue
		}
		pkg := s.Packages[i].ImportPath
		j := slices.IndexFunc(r.Packages, func(p PackageResult) bool { return p.ImportPath == pkg })
		if j < 0 {
			continue // never reported: a problem of its own
		}
		pr := r.Packages[j]
		k := slices.IndexFunc(pr.Tests, func(t TestResult) bool { return t.Name == e.Test })
		switch {
		case k >= 0 && pr.Tests[k].Action == "skip":
		case k >= 0 && pr.Tests[k].Action == "pass":
			out = append(out, SkipMismatch{Package: pkg, Test: e.Test, Got: "passed", Want: e.Reason})
		case k >= 0:
			out = append(out, SkipMismatch{Package: pkg, Test: e.Test, Got: "failed", Want: e.Reason})
		case pr.ExitCode != -1:
			out = append(out, SkipMismatch{Package: pkg, Test: e.Test, Got: "did not run", Want: e.Reason})
		}
	}
	return out
}

// printed reports whether a line of the test's output contains s.
func (t *TestResult) printed(s string) bool {
	return slices.ContainsFunc(t.Output, func(l string) bool { return strings.Contains(l, s) })
}

// selected reports whether -test.run=run runs the test called name (or
// the part of it that the pattern names): as go test matches, each
// slash-separated element of the pattern against the name's element at
// that level. An alternation whose branches hold slashes is beyond it;
// the suite's patterns have none.
func selected(run, name string) bool {
	if run == "" {
		return true
	}
	elems := strings.Split(name, "/")
	for i, pat := range splitLevels(run) {
		if i >= len(elems) {
			break
		}
		if ok, err := regexp.MatchString(pat, elems[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

// splitLevels splits a -test.run pattern at the slashes outside
// brackets and parentheses.
func splitLevels(s string) []string {
	var (
		out          []string
		start, depth int
		class        bool
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
		case class:
			class = c != ']'
		case c == '[':
			class = true
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == '/' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

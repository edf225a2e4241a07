package vm

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteReport prints the kernel matrix: one row per kernel with its
// counts and time, what each kernel ran, the skipped tests with their
// reasons, each marked expected or UNEXPECTED by its kernel's list, and
// the failures with their output (skip mismatches among them). The last
// line is the totals, "vm-test: N passed, N failed, N skipped, N skip
// mismatches".
func WriteReport(w io.Writer, suite *Suite, results []*KernelResult) {
	fmt.Fprintf(w, "\nKernel matrix: tests matching %q of", suite.Run)
	for _, p := range suite.Packages {
		fmt.Fprintf(w, " %s", p.Rel)
	}
	fmt.Fprintln(w, ", on each kernel below.")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tRELEASE\tRAN AS\tBOOT\tWALL\tPASSED\tFAILED\tSKIPPED\tRESULT")
	var tp, tf, ts int
	for _, r := range results {
		p, f, s := r.Counts()
		tp, tf, ts = tp+p, tf+f, ts+s
		result := "ok"
		if r.Failed() {
			result = "FAIL"
		}
		boot := "-"
		if r.Boot > 0 {
			boot = r.Boot.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.Name, r.Release, r.How, boot,
			r.Wall.Round(time.Second), p, f, s, result)
	}
	tw.Flush()
	fmt.Fprintln(w, "(passed and failed count top-level tests; skipped counts tests and subtests)")

	fmt.Fprintln(w, "\nPer package (passed/failed/skipped):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "PACKAGE")
	for _, r := range results {
		fmt.Fprintf(tw, "\t%s", r.Name)
	}
	fmt.Fprintln(tw)
	for _, sp := range suite.Packages {
		fmt.Fprint(tw, sp.Rel)
		for _, r := range results {
			cell := "not run"
			for _, p := range r.Packages {
				if p.ImportPath != sp.ImportPath {
					continue
				}
				pr := KernelResult{Packages: []PackageResult{p}}
				a, b, c := pr.Counts()
				cell = fmt.Sprintf("%d/%d/%d", a, b, c)
				if p.ExitCode != 0 {
					cell += fmt.Sprintf(" exit %d", p.ExitCode)
				}
			}
			fmt.Fprintf(tw, "\t%s", cell)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()

	if len(suite.GuestSkip) > 0 {
		fmt.Fprintln(w, "\nNot run in the VMs (run natively only):")
		for _, n := range slices.Sorted(maps.Keys(suite.GuestSkip)) {
			fmt.Fprintf(w, "  %s: %s\n", n, suite.GuestSkip[n])
		}
	}

	fmt.Fprintln(w, "\nSkipped (each checked against its kernel's list of expected skips):")
	skipped, mismatches := false, 0
	for _, r := range results {
		mismatches += len(r.SkipMismatches)
		for _, p := range r.Packages {
			for _, t := range p.Tests {
				if t.Action != "skip" {
					continue
				}
				skipped = true
				verdict := "expected"
				if slices.ContainsFunc(r.SkipMismatches, func(m SkipMismatch) bool {
					return m.Skipped && m.Package == p.ImportPath && m.Test == t.Name
				}) {
					verdict = "UNEXPECTED"
				}
				fmt.Fprintf(w, "  %s: %s %s: %s [%s]\n", r.Name, p.ImportPath, t.Name, t.SkipReason(), verdict)
			}
		}
	}
	if !skipped {
		fmt.Fprintln(w, "  none")
	}

	for _, r := range results {
		if !r.Failed() {
			continue
		}
		fmt.Fprintf(w, "\nFAILED on %s (%s):\n", r.Name, r.Release)
		for _, pr := range r.Problems {
			fmt.Fprintf(w, "  %s\n", pr)
		}
		for _, m := range r.SkipMismatches {
			fmt.Fprintf(w, "  %s\n", m)
		}
		for _, p := range r.Packages {
			failedTests := 0
			for _, t := range p.Tests {
				if t.Action != "fail" {
					continue
				}
				failedTests++
				fmt.Fprintf(w, "  --- FAIL: %s %s (%s)\n", p.ImportPath, t.Name, t.Elapsed.Round(10*time.Millisecond))
				for _, l := range t.Output {
					fmt.Fprintf(w, "      %s\n", l)
				}
			}
			if p.ExitCode != 0 && failedTests == 0 {
				fmt.Fprintf(w, "  %s exited %d; its last output:\n", p.ImportPath, p.ExitCode)
				for _, l := range tailOf(string(p.Raw), 30) {
					fmt.Fprintf(w, "      %s\n", l)
				}
			}
		}
		if r.Console != "" {
			fmt.Fprintf(w, "  end of the guest's console:\n")
			for _, l := range strings.Split(r.Console, "\n") {
				fmt.Fprintf(w, "      %s\n", l)
			}
		}
	}
	fmt.Fprintf(w, "\nvm-test: %d passed, %d failed, %d skipped, %d skip mismatches\n", tp, tf, ts, mismatches)
}

func tailOf(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\x16", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

package conformance

import (
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Result is one spec or suite node of a ginkgo JUnit report.
type Result struct {
	// Name is the spec's full text, without ginkgo's "[It] " prefix
	// (setup nodes keep theirs: "[SynchronizedBeforeSuite]").
	Name string
	// Status is ginkgo's: passed, failed, skipped, pending, panicked,
	// interrupted, timedout, aborted.
	Status string
	Took   time.Duration
	// Message is the failure's, empty when it passed.
	Message string
}

// Spec reports whether r is a spec (an It), not a suite node.
func (r Result) Spec() bool {
	return !strings.HasPrefix(r.Name, "[") || strings.HasPrefix(r.Name, "[sig-")
}

// Ran reports whether the spec ran (it was not skipped or pending).
func (r Result) Ran() bool { return r.Status != "skipped" && r.Status != "pending" }

// junitReport is the part of ginkgo's JUnit report (reporters/junit_report.go)
// read here.
type junitReport struct {
	XMLName xml.Name `xml:"testsuites"`
	Suites  []struct {
		Cases []struct {
			Name    string  `xml:"name,attr"`
			Status  string  `xml:"status,attr"`
			Time    float64 `xml:"time,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// ReadJUnit reads ginkgo's JUnit report.
func ReadJUnit(r io.Reader) ([]Result, error) {
	var rep junitReport
	if err := xml.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("read the JUnit report: %w", err)
	}
	var out []Result
	for _, s := range rep.Suites {
		for _, c := range s.Cases {
			res := Result{
				Name:   strings.TrimPrefix(c.Name, "[It] "),
				Status: c.Status,
				Took:   time.Duration(c.Time * float64(time.Second)).Round(time.Millisecond),
			}
			if c.Failure != nil {
				res.Message = c.Failure.Message
			} else if c.Error != nil {
				res.Message = c.Error.Message
			}
			if res.Status == "" {
				return nil, fmt.Errorf("read the JUnit report: test case %q has no status", c.Name)
			}
			out = append(out, res)
		}
	}
	return out, nil
}

// Check compares a run's results with the specs a dry run listed: it
// returns the problems (a listed spec that did not run or did not pass, a
// suite node that failed, a spec that ran but was not listed), each
// naming the spec, in the order of the listing.
func Check(listed []string, results []Result) []string {
	byName := map[string]Result{}
	var problems []string
	for _, r := range results {
		if !r.Spec() {
			if r.Status != "passed" && r.Status != "skipped" {
				problems = append(problems, fmt.Sprintf("%s %s: %s", r.Name, r.Status, firstLine(r.Message)))
			}
			continue
		}
		byName[r.Name] = r
		if r.Ran() && !slices.Contains(listed, r.Name) {
			problems = append(problems, fmt.Sprintf("ran but not listed by the dry run: %s (%s)", r.Name, r.Status))
		}
	}
	for _, name := range listed {
		r, ok := byName[name]
		switch {
		case !ok:
			problems = append(problems, "not in the report: "+name)
		case r.Status != "passed":
			problems = append(problems, fmt.Sprintf("%s: %s %s", r.Status, name, firstLine(r.Message)))
		}
	}
	return problems
}

// Listed returns the names of the specs a dry run's report holds as run
// (ginkgo reports the focused specs of a dry run as passed).
func Listed(results []Result) []string {
	var names []string
	for _, r := range results {
		if r.Spec() && r.Ran() {
			names = append(names, r.Name)
		}
	}
	return names
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

package conformance

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// report is shaped like ginkgo v2's JUnit report: suite nodes, a focused
// spec that passed, one that failed, and a spec skipped by the focus.
const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="1" errors="0" failures="1" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/e2e" tests="4" disabled="1" skipped="1" errors="0" failures="1" time="12.5" timestamp="2026-12-02T23:00:00">
    <properties><property name="SuiteSucceeded" value="false"></property></properties>
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.5"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="passed" time="6.25"></testcase>
    <testcase name="[It] [sig-network] Services should be able to create a functioning NodePort service [Conformance]" classname="Kubernetes e2e suite" status="failed" time="5.5">
      <failure message="[FAILED] service is not reachable within 2m0s timeout on endpoint 198.18.0.1:30080&#xA;more" type="failed">details</failure>
    </testcase>
    <testcase name="[It] [sig-apps] Deployment should not run" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[SynchronizedAfterSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1"></testcase>
  </testsuite>
</testsuites>`

const (
	basic    = "[sig-network] Services should serve a basic endpoint from pods  [Conformance]"
	nodePort = "[sig-network] Services should be able to create a functioning NodePort service [Conformance]"
)

func TestReadJUnit(t *testing.T) {
	res, err := ReadJUnit(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("%d results, want 5: %+v", len(res), res)
	}
	if r := res[1]; r.Name != basic || r.Status != "passed" || r.Took != 6250*time.Millisecond || !r.Spec() || !r.Ran() {
		t.Errorf("passed spec read as %+v", r)
	}
	if r := res[2]; r.Status != "failed" || !strings.HasPrefix(r.Message, "[FAILED] service is not reachable") {
		t.Errorf("failed spec read as %+v", r)
	}
	if r := res[0]; r.Spec() {
		t.Errorf("a suite node counted as a spec: %+v", r)
	}
	if r := res[3]; r.Ran() {
		t.Errorf("a skipped spec counted as run: %+v", r)
	}
	if got := Listed(res); !slices.Equal(got, []string{basic, nodePort}) {
		t.Errorf("Listed = %q", got)
	}
	for _, bad := range []string{"", "<testsuites><testsuite><testcase name=\"x\"/></testsuite></testsuites>", "not xml"} {
		if _, err := ReadJUnit(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadJUnit(%q): no error", bad)
		}
	}
}

func TestCheck(t *testing.T) {
	res, err := ReadJUnit(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	missing := "[sig-network] Services should find a service from listing all namespaces [Conformance]"
	got := Check([]string{basic, nodePort, missing}, res)
	want := []string{
		"failed: " + nodePort + " [FAILED] service is not reachable within 2m0s timeout on endpoint 198.18.0.1:30080",
		"not in the report: " + missing,
	}
	if !slices.Equal(got, want) {
		t.Errorf("Check =\n%q\nwant\n%q", got, want)
	}
	if got := Check([]string{basic}, res); len(got) != 1 || !strings.HasPrefix(got[0], "ran but not listed") {
		t.Errorf("a spec that ran unlisted: %q", got)
	}
	res[0].Status = "failed"
	res[0].Message = "[FAILED] no nodes\nstack"
	if got := Check(Listed(res), res); len(got) != 2 || got[0] != "[SynchronizedBeforeSuite] failed: [FAILED] no nodes" {
		t.Errorf("a failed suite node: %q", got)
	}
}

package vm

import (
	"slices"
	"strings"
	"testing"
)

func TestCheckSkips(t *testing.T) {
	const lacks = "kernel lacks bpf_sock_destroy kfunc [>= 6.5] (not supported)"
	suite := &Suite{
		Run: "^TestPrivileged",
		Packages: []Package{
			{ImportPath: "m/tests", Rel: "tests"},
			{ImportPath: "m/pkg/loader", Rel: "pkg/loader"},
		},
		GuestSkip: map[string]string{"TestPrivilegedUpgrade": "needs git"},
	}
	skip := func(name, msg string) TestResult {
		return TestResult{Name: name, Action: "skip", Output: []string{"    x_test.go:1: " + msg}}
	}
	pass := func(name string) TestResult { return TestResult{Name: name, Action: "pass"} }
	fail := func(name string) TestResult { return TestResult{Name: name, Action: "fail"} }
	destroy := ExpectedSkip{Package: "tests", Test: "TestPrivilegedDestroy", Reason: lacks}
	sub := ExpectedSkip{Package: "tests", Test: "TestPrivilegedCaps/exactly/closes_sockets", Reason: lacks}

	for _, tc := range []struct {
		name  string
		tests []TestResult // of m/tests
		exit  int
		want  []ExpectedSkip
		guest bool
		// mismatches, as "unexpected|reason|missing TEST GOT"
		mismatches []string
	}{
		{name: "nothing skipped, nothing expected",
			tests: []TestResult{pass("TestPrivilegedA")}},
		{name: "the listed skips, for the listed reason",
			tests: []TestResult{pass("TestPrivilegedA"), skip("TestPrivilegedDestroy", lacks),
				skip("TestPrivilegedCaps/exactly/closes_sockets", lacks), pass("TestPrivilegedCaps/exactly"), pass("TestPrivilegedCaps")},
			want: []ExpectedSkip{destroy, sub}},
		{name: "a skip the list lacks",
			tests:      []TestResult{pass("TestPrivilegedA"), skip("TestPrivilegedB", "kernel lacks LRU hash maps [>= 4.10] (probe failed: EPERM)")},
			mismatches: []string{"unexpected TestPrivilegedB x_test.go:1: kernel lacks LRU hash maps [>= 4.10] (probe failed: EPERM)"}},
		{name: "a skipped subtest the list lacks",
			tests:      []TestResult{skip("TestPrivilegedCaps/exactly/closes_sockets", lacks), pass("TestPrivilegedCaps")},
			mismatches: []string{"unexpected TestPrivilegedCaps/exactly/closes_sockets x_test.go:1: " + lacks}},
		{name: "a listed test skipped for another reason (a probe that broke)",
			tests: []TestResult{skip("TestPrivilegedDestroy",
				"kernel lacks bpf_sock_destroy kfunc [>= 6.5] (probe failed: read kernel BTF: no such file)")},
			want: []ExpectedSkip{destroy},
			mismatches: []string{"reason TestPrivilegedDestroy x_test.go:1: " +
				"kernel lacks bpf_sock_destroy kfunc [>= 6.5] (probe failed: read kernel BTF: no such file)"}},
		{name: "a listed test that passed",
			tests: []TestResult{pass("TestPrivilegedDestroy")}, want: []ExpectedSkip{destroy},
			mismatches: []string{"missing TestPrivilegedDestroy passed"}},
		{name: "a listed test that failed",
			tests: []TestResult{fail("TestPrivilegedDestroy")}, exit: 1, want: []ExpectedSkip{destroy},
			mismatches: []string{"missing TestPrivilegedDestroy failed"}},
		{name: "a listed test that no longer exists",
			tests: []TestResult{pass("TestPrivilegedA")}, want: []ExpectedSkip{destroy, sub},
			mismatches: []string{"missing TestPrivilegedDestroy did not run", "missing TestPrivilegedCaps/exactly/closes_sockets did not run"}},
		{name: "a listed test of a package that never finished",
			tests: []TestResult{pass("TestPrivilegedA")}, exit: -1, want: []ExpectedSkip{destroy}},
		{name: "a listed test that -test.run leaves out",
			tests: []TestResult{pass("TestPrivilegedA")},
			want:  []ExpectedSkip{{Package: "tests", Test: "TestOther", Reason: lacks}}},
		{name: "a listed test of a package not in the suite",
			tests: []TestResult{pass("TestPrivilegedA")},
			want:  []ExpectedSkip{{Package: "pkg/gone", Test: "TestPrivilegedDestroy", Reason: lacks}}},
		{name: "a listed test that a VM leaves out",
			tests: []TestResult{pass("TestPrivilegedA")}, guest: true,
			want: []ExpectedSkip{{Package: "tests", Test: "TestPrivilegedUpgrade/v1", Reason: lacks}}},
		{name: "a listed test that runs natively",
			tests:      []TestResult{pass("TestPrivilegedUpgrade/v1"), pass("TestPrivilegedUpgrade")},
			want:       []ExpectedSkip{{Package: "tests", Test: "TestPrivilegedUpgrade/v1", Reason: lacks}},
			mismatches: []string{"missing TestPrivilegedUpgrade/v1 passed"}},
		{name: "a listed test of another package",
			tests:      []TestResult{skip("TestPrivilegedDestroy", lacks)},
			want:       []ExpectedSkip{{Package: "pkg/loader", Test: "TestPrivilegedDestroy", Reason: lacks}},
			mismatches: []string{"unexpected TestPrivilegedDestroy x_test.go:1: " + lacks, "missing TestPrivilegedDestroy did not run"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &KernelResult{Name: "6.1", Packages: []PackageResult{
				{ImportPath: "m/tests", ExitCode: tc.exit, Tests: tc.tests},
				{ImportPath: "m/pkg/loader", Tests: []TestResult{pass("TestPrivilegedLoad")}},
			}}
			var got []string
			for _, m := range suite.CheckSkips(r, tc.want, tc.guest) {
				kind := "missing"
				switch {
				case m.Skipped && m.Want == "":
					kind = "unexpected"
				case m.Skipped:
					kind = "reason"
				}
				got = append(got, kind+" "+m.Test+" "+m.Got)
				if (kind == "unexpected") != (m.Want == "") || (kind != "unexpected" && m.Want != lacks) {
					t.Errorf("%s: Want = %q", m, m.Want)
				}
			}
			if !slices.Equal(got, tc.mismatches) {
				t.Errorf("mismatches\n  %q\nwant\n  %q", got, tc.mismatches)
			}
			r.SkipMismatches = suite.CheckSkips(r, tc.want, tc.guest)
			if tc.exit == 0 && r.Failed() != (len(tc.mismatches) > 0) {
				t.Errorf("Failed() = %v with %d mismatches", r.Failed(), len(tc.mismatches))
			}
		})
	}
}

func TestSkipMismatchString(t *testing.T) {
	for _, tc := range []struct {
		m    SkipMismatch
		want string
	}{
		{SkipMismatch{Package: "m/t", Test: "TestB", Got: "x.go:1: kernel lacks Z", Skipped: true},
			"unexpected skip: m/t TestB: x.go:1: kernel lacks Z (not in this kernel's list of expected skips)"},
		{SkipMismatch{Package: "m/t", Test: "TestB", Got: "x.go:1: kernel lacks Z (probe failed)", Want: "kernel lacks Z (not supported)", Skipped: true},
			`skip for another reason: m/t TestB: x.go:1: kernel lacks Z (probe failed) (the list expects "kernel lacks Z (not supported)")`},
		{SkipMismatch{Package: "m/t", Test: "TestB", Got: "passed", Want: "kernel lacks Z"},
			`expected skip did not happen: m/t TestB passed (the list expects a skip with "kernel lacks Z")`},
	} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("String() = %s\nwant        %s", got, tc.want)
		}
	}
}

func TestSelected(t *testing.T) {
	for _, tc := range []struct {
		run, name string
		want      bool
	}{
		{"", "TestX/sub", true},
		{"^TestPrivileged", "TestPrivilegedA", true},
		{"^TestPrivileged", "TestPrivilegedA/sub/deeper", true},
		{"^TestPrivileged", "TestOther", false},
		{"^TestPrivilegedA$/^sub$", "TestPrivilegedA/sub/deeper", true},
		{"^TestPrivilegedA$/^sub$", "TestPrivilegedA/other", false},
		{"^TestPrivilegedA$/^sub$", "TestPrivilegedA", true},
		{"Test(A|B)/x", "TestB/x", true},
		{"Test[/]A", "Test/A", false}, // one level: never matches a name element
		{"(", "TestA", false},         // not a regexp
	} {
		if got := selected(tc.run, tc.name); got != tc.want {
			t.Errorf("selected(%q, %q) = %v, want %v", tc.run, tc.name, got, tc.want)
		}
	}
	if got := splitLevels(`a/(b/c)/[/]/\/d`); !slices.Equal(got, []string{"a", "(b/c)", "[/]", `\/d`}) {
		t.Errorf("splitLevels = %q", got)
	}
}

func TestReportMarksSkips(t *testing.T) {
	suite := &Suite{Run: "^TestPrivileged", Packages: []Package{{ImportPath: "m/a", Rel: "a"}}}
	r := &KernelResult{Name: "6.12", Release: "6.12.1", How: "qemu",
		Packages: []PackageResult{{ImportPath: "m/a", Tests: []TestResult{
			{Name: "TestPrivilegedX", Action: "pass"},
			{Name: "TestPrivilegedY", Action: "skip", Output: []string{"    y_test.go:3: kernel lacks Z"}},
			{Name: "TestPrivilegedW", Action: "skip", Output: []string{"    w_test.go:3: kernel lacks V"}},
		}}}}
	r.SkipMismatches = suite.CheckSkips(r, []ExpectedSkip{
		{Package: "a", Test: "TestPrivilegedW", Reason: "kernel lacks V"},
		{Package: "a", Test: "TestPrivilegedX", Reason: "kernel lacks X"},
	}, true)
	var buf strings.Builder
	WriteReport(&buf, suite, []*KernelResult{r})
	out := buf.String()
	for _, want := range []string{
		"6.12: m/a TestPrivilegedY: y_test.go:3: kernel lacks Z [UNEXPECTED]",
		"6.12: m/a TestPrivilegedW: w_test.go:3: kernel lacks V [expected]",
		"FAILED on 6.12 (6.12.1):\n" +
			"  unexpected skip: m/a TestPrivilegedY: y_test.go:3: kernel lacks Z (not in this kernel's list of expected skips)\n" +
			`  expected skip did not happen: m/a TestPrivilegedX passed (the list expects a skip with "kernel lacks X")`,
		"\nvm-test: 1 passed, 0 failed, 2 skipped, 2 skip mismatches\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "1       0       2        FAIL") {
		t.Errorf("a kernel with skip mismatches is not marked FAIL:\n%s", out)
	}
}

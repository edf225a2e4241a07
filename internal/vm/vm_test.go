package vm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
)

func TestEnvironmentNamesMatchTheTests(t *testing.T) {
	if agentBinEnv != testagent.AgentBinEnv || allowMissingFeaturesEnv != sandbox.AllowMissingFeaturesEnv || emulatedEnv != sandbox.EmulatedEnv {
		t.Errorf("guest env %s, %s, %s; the tests read %s, %s, %s", agentBinEnv, allowMissingFeaturesEnv, emulatedEnv,
			testagent.AgentBinEnv, sandbox.AllowMissingFeaturesEnv, sandbox.EmulatedEnv)
	}
}

func TestInitramfs(t *testing.T) {
	var buf bytes.Buffer
	a, err := NewInitramfs(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		a.File("/socklb/bin/x.test", 0o755, []byte("binary")),
		a.File("/socklb/bin/y.test", 0o644, []byte("other")),
		a.Symlink("/bin/sh", "busybox"),
		a.Dir("/socklb/src/pkg/loader"),
		a.Close(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	z, err := zstd.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	r := cpio.NewReader(z)
	type entry struct {
		name string
		mode cpio.FileMode
		data string
	}
	var got []entry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		if h.Mode&cpio.ModeType == cpio.TypeSymlink {
			// The reader hands a link's target over as Linkname.
			data = []byte(h.Linkname)
		}
		got = append(got, entry{h.Name, h.Mode, string(data)})
	}
	want := []entry{
		{"socklb", cpio.TypeDir | 0o755, ""},
		{"socklb/bin", cpio.TypeDir | 0o755, ""},
		{"socklb/bin/x.test", cpio.TypeReg | 0o755, "binary"},
		{"socklb/bin/y.test", cpio.TypeReg | 0o644, "other"},
		{"bin", cpio.TypeDir | 0o755, ""},
		{"bin/sh", cpio.TypeSymlink | 0o777, "busybox"},
		{"socklb/src", cpio.TypeDir | 0o755, ""},
		{"socklb/src/pkg", cpio.TypeDir | 0o755, ""},
		{"socklb/src/pkg/loader", cpio.TypeDir | 0o755, ""},
	}
	if !slices.Equal(got, want) {
		t.Errorf("archive:\n%v\nwant:\n%v", got, want)
	}
}

func TestParseLdd(t *testing.T) {
	out := []byte(`	linux-vdso.so.1 (0x00007eff81f25000)
	libelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007eff81e70000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007eff81c63000)
	/lib64/ld-linux-x86-64.so.2 (0x00007eff81f27000)
`)
	want := []string{"/lib/x86_64-linux-gnu/libelf.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if got := parseLdd(out); !slices.Equal(got, want) {
		t.Errorf("parseLdd = %v, want %v", got, want)
	}
}

func TestLoadOrder(t *testing.T) {
	deps := map[string][]string{"veth": nil, "a": {"b", "c"}, "b": {"c"}, "c": nil}
	got, err := loadOrder([]string{"veth", "a"}, deps)
	if want := []string{"veth", "c", "b", "a"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("loadOrder = %v, %v; want %v", got, err, want)
	}
	if _, err := loadOrder([]string{"x"}, deps); err == nil {
		t.Error("a module missing from the package was accepted")
	}
	if _, err := loadOrder([]string{"p"}, map[string][]string{"p": {"q"}, "q": {"p"}}); err == nil {
		t.Error("a dependency cycle was accepted")
	}
}

func TestInitScript(t *testing.T) {
	s := &Suite{
		Run: "^TestPrivileged", Timeout: 5 * time.Minute,
		Packages: []Package{{ImportPath: "example.com/m/pkg/loader", Rel: "pkg/loader"}},
		GuestSkip: map[string]string{
			"TestPrivilegedB": "needs git",
			"TestPrivilegedA": "needs go",
		},
	}
	script := s.initScript(&Kernel{Modules: []string{"veth"}})
	for _, want := range []string{
		"insmod /socklb/modules/veth.ko",
		"say begin example.com/m/pkg/loader\n",
		"(cd '/socklb/src/pkg/loader' && env SOCKLB_AGENT_BIN=/socklb/bin/socklb-agent SOCKLB_ALLOW_MISSING_FEATURES=1 SOCKLB_EMULATED=1 /socklb/bin/pkg_loader.test " +
			"'-test.run=^TestPrivileged' '-test.v=test2json' '-test.count=1' '-test.timeout=5m0s' '-test.skip=^(TestPrivilegedA|TestPrivilegedB)$') >&3 2>&1\n",
		"say end example.com/m/pkg/loader $?\n",
		"say done\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("init script lacks %q:\n%s", want, script)
		}
	}
	if slices.ContainsFunc(s.testArgs(false), func(a string) bool { return strings.HasPrefix(a, "-test.skip") }) {
		t.Error("native runs skip the tests that only the VMs cannot run")
	}
	if got := shellQuote("it's"); got != `'it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
}

// sampleOutput is what a test binary prints with -test.v=test2json.
const sampleOutput = "\x16=== RUN   TestA\n" +
	"\x16--- PASS: TestA (0.50s)\n" +
	"\x16=== RUN   TestB\n" +
	"    b_test.go:10: kernel lacks bpf_sock_destroy kfunc [>= 6.5] (not supported)\n" +
	"\x16--- SKIP: TestB (0.00s)\n" +
	"\x16=== RUN   TestC\n" +
	"\x16=== RUN   TestC/sub\n" +
	"    c_test.go:5: boom\n" +
	"\x16--- FAIL: TestC/sub (1.25s)\n" +
	"\x16--- FAIL: TestC (1.50s)\n" +
	"\x16FAIL\n"

func TestParseGuestOutput(t *testing.T) {
	data := marker + " kernel 6.1.0-56-cloud-amd64\n" +
		marker + " problem insmod dummy failed\n" +
		marker + " begin example.com/m/a\n" + sampleOutput + marker + " end example.com/m/a 1\n" +
		marker + " begin example.com/m/b\n" + "\x16=== RUN   TestD\n"
	g := parseGuestOutput([]byte(data))
	if g.release != "6.1.0-56-cloud-amd64" || g.done || !slices.Equal(g.problems, []string{"insmod dummy failed"}) {
		t.Errorf("release %q done %v problems %q", g.release, g.done, g.problems)
	}
	if len(g.packages) != 2 {
		t.Fatalf("packages %+v", g.packages)
	}
	if a := g.packages[0]; a.ImportPath != "example.com/m/a" || a.ExitCode != 1 || string(a.Raw) != sampleOutput {
		t.Errorf("first package %s exit %d raw %q", a.ImportPath, a.ExitCode, a.Raw)
	}
	if b := g.packages[1]; b.ExitCode != -1 {
		t.Errorf("an unfinished package has exit code %d, want -1", b.ExitCode)
	}
	if g := parseGuestOutput([]byte(marker + " done\n")); !g.done {
		t.Error("done marker not seen")
	}
}

func TestTest2JSON(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the host side needs the go command: %v", err)
	}
	tests, err := Test2JSON(context.Background(), []byte(sampleOutput))
	if err != nil {
		t.Fatal(err)
	}
	type short struct {
		name, action string
		elapsed      time.Duration
	}
	var got []short
	for _, r := range tests {
		got = append(got, short{r.Name, r.Action, r.Elapsed})
	}
	want := []short{
		{"TestA", "pass", 500 * time.Millisecond},
		{"TestB", "skip", 0},
		{"TestC/sub", "fail", 1250 * time.Millisecond},
		{"TestC", "fail", 1500 * time.Millisecond},
	}
	if !slices.Equal(got, want) {
		t.Errorf("results %v, want %v", got, want)
	}
	if r := tests[1].SkipReason(); r != "b_test.go:10: kernel lacks bpf_sock_destroy kfunc [>= 6.5] (not supported)" {
		t.Errorf("skip reason %q", r)
	}
	if out := tests[2].Output; !slices.Equal(out, []string{"    c_test.go:5: boom"}) {
		t.Errorf("failure output %q", out)
	}

	k := &KernelResult{Packages: []PackageResult{{ImportPath: "a", ExitCode: 1, Tests: tests}}}
	if p, f, s := k.Counts(); p != 1 || f != 1 || s != 1 || !k.Failed() {
		t.Errorf("counts %d/%d/%d failed %v; want 1/1/1 (a failed subtest counts with its parent), failed", p, f, s, k.Failed())
	}
	k.Packages[0].Tests = append(k.Packages[0].Tests, TestResult{Name: "TestA/old kernel", Action: "skip"})
	if _, _, s := k.Counts(); s != 2 {
		t.Errorf("skipped %d, want 2: a skipped subtest counts", s)
	}
}

func TestReport(t *testing.T) {
	suite := &Suite{
		Run:       "^TestPrivileged",
		Packages:  []Package{{ImportPath: "m/a", Rel: "a"}},
		GuestSkip: map[string]string{"TestPrivilegedUpgrade": "needs git"},
	}
	ok := &KernelResult{Name: "6.12", Release: "6.12.1", How: "qemu", Wall: 70 * time.Second, Boot: 4 * time.Second,
		Packages: []PackageResult{{ImportPath: "m/a", Tests: []TestResult{
			{Name: "TestPrivilegedX", Action: "pass"},
			{Name: "TestPrivilegedY", Action: "skip", Output: []string{"    y_test.go:3: kernel lacks Z"}},
		}}}}
	bad := &KernelResult{Name: "6.1", Release: "6.1.0", How: "qemu", Wall: time.Minute,
		Problems: []string{"VM timed out after 15m0s"}, Console: "Kernel panic"}
	var buf bytes.Buffer
	WriteReport(&buf, suite, []*KernelResult{ok, bad})
	out := buf.String()
	for _, want := range []string{
		"6.12    6.12.1   qemu    4s    1m10s  1       0       1        ok",
		"6.1     6.1.0    qemu    -     1m0s   0       0       0        FAIL",
		"a        1/0/1  not run",
		"TestPrivilegedUpgrade: needs git",
		"6.12: m/a TestPrivilegedY: y_test.go:3: kernel lacks Z [expected]",
		"FAILED on 6.1 (6.1.0):\n  VM timed out after 15m0s",
		"      Kernel panic",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasSuffix(out, "\nvm-test: 1 passed, 0 failed, 1 skipped, 0 skip mismatches\n") {
		t.Errorf("report does not end with the totals:\n%s", out)
	}
}

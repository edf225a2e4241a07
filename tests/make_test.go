package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestFinding8MakeTestInstallsItsDeps: `make test` installs, when missing,
// every Debian package the tests run (iptables-save, nft and conntrack for
// the kube-proxy comparisons, bpftool), through the one deps target that
// .ci/run uses too, before any test runs; and it runs the race detector
// and the fuzz targets.
func TestFinding8MakeTestInstallsItsDeps(t *testing.T) {
	out, err := exec.Command("make", "-C", "..", "-n", "test").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n test: %v\n%s", err, out)
	}
	plan := string(out)
	install := strings.Index(plan, "apt-get install")
	goTest := strings.Index(plan, "-count=1 -p 1 -timeout 30m ./...")
	if install < 0 || goTest < 0 || install > goTest {
		t.Fatalf("make test does not install its packages before the tests:\n%s", plan)
	}
	for _, pkg := range []string{"iptables", "nftables", "conntrack", "bpftool", "clang-19", "libbpf-dev", "iproute2", "util-linux"} {
		if !strings.Contains(plan[:goTest], " "+pkg) {
			t.Errorf("make test does not install %s", pkg)
		}
	}
	for _, step := range []string{"-race", "-fuzz"} {
		if !strings.Contains(plan, step) {
			t.Errorf("make test does not run %s", step)
		}
	}
	ci, err := exec.Command("grep", "-q", "^make deps", "../.ci/run").CombinedOutput()
	if err != nil {
		t.Errorf(".ci/run does not install through make deps: %v %s", err, ci)
	}
}

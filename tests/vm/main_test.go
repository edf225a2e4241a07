package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb/internal/vm"
	"github.com/socklb/socklb/pkg/loader"
)

func TestParseKernels(t *testing.T) {
	got, err := parseKernels("6.1=linux-image-cloud-amd64, 6.12=linux-image-6.12-cloud-amd64,")
	want := []kernelFlag{{"6.1", "linux-image-cloud-amd64"}, {"6.12", "linux-image-6.12-cloud-amd64"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("parseKernels = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"6.1", "=pkg", "6.1="} {
		if _, err := parseKernels(bad); err == nil {
			t.Errorf("parseKernels(%q) accepted", bad)
		}
	}
}

func TestExcluded(t *testing.T) {
	ex := []string{"tests/e2e/", "tests/bench/"}
	for rel, want := range map[string]bool{
		"tests/e2e":             true,
		"tests/e2e/scenarios":   true,
		"tests/bench/kubeproxy": true,
		"tests":                 false,
		"tests/e2effect":        false,
		"pkg/loader":            false,
	} {
		if got := excluded(rel, ex); got != want {
			t.Errorf("excluded(%q) = %v, want %v", rel, got, want)
		}
	}
}

func TestSkipListsCoverTheKernels(t *testing.T) {
	ks, err := parseKernels(defaultKernels)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSkipLists(ks, true); err != nil {
		t.Error(err)
	}
	err = checkSkipLists(append(ks, kernelFlag{"6.6", "linux-image-6.6-cloud-amd64"}), true)
	if err == nil || !strings.Contains(err.Error(), "[6.6]") {
		t.Errorf("a kernel without a list of expected skips: %v", err)
	}
}

// TestSkipListsNameRealTests: every listed test exists in its package,
// with each subtest's name among the strings of its test files, and runs
// in the VMs; so a renamed test shows here, without a VM.
func TestSkipListsNameRealTests(t *testing.T) {
	for kernel, list := range expectedSkips {
		seen := map[string]bool{}
		for _, e := range list {
			if seen[e.Package+" "+e.Test] {
				t.Errorf("%s: %s %s is listed twice", kernel, e.Package, e.Test)
			}
			seen[e.Package+" "+e.Test] = true
			if e.Reason == "" {
				t.Errorf("%s: %s %s has no reason", kernel, e.Package, e.Test)
			}
			files, err := filepath.Glob(filepath.Join("..", "..", filepath.FromSlash(e.Package), "*_test.go"))
			if err != nil || len(files) == 0 {
				t.Errorf("%s: %s: no test files (%v)", kernel, e.Package, err)
				continue
			}
			var src strings.Builder
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				src.Write(data)
			}
			parts := strings.Split(e.Test, "/")
			if !strings.Contains(src.String(), "\nfunc "+parts[0]+"(t *testing.T) {") {
				t.Errorf("%s: %s has no func %s", kernel, e.Package, parts[0])
			}
			for _, sub := range parts[1:] {
				if !strings.Contains(src.String(), strconv.Quote(strings.ReplaceAll(sub, "_", " "))) &&
					!strings.Contains(src.String(), strconv.Quote(sub)) {
					t.Errorf("%s: %s %s: no subtest named %q", kernel, e.Package, e.Test, sub)
				}
			}
			if _, ok := guestSkip[parts[0]]; ok && kernel != "host" {
				t.Errorf("%s: %s does not run in the VMs (guestSkip), so it cannot skip there", kernel, parts[0])
			}
		}
	}
}

// TestSkipReasonsAreTheProbes: the listed reasons are what
// sandbox.RequireFeature prints for the loader's feature, as the tests
// name it ("NAME [>= MIN]"), when its probe found it not supported.
func TestSkipReasonsAreTheProbes(t *testing.T) {
	i := slices.IndexFunc(loader.ProbeFeatures(), func(f loader.Feature) bool { return f.Name == loader.FeatSockDestroy })
	if i < 0 {
		t.Fatalf("the loader probes no %q", loader.FeatSockDestroy)
	}
	f := loader.ProbeFeatures()[i]
	want := fmt.Sprintf("kernel lacks %s [>= %s] (kernel BTF has no bpf_sock_destroy: %v)", f.Name, f.MinKernel, ebpf.ErrNotSupported)
	if lacksSockDestroy != want {
		t.Errorf("lacksSockDestroy = %q\nwant               %q", lacksSockDestroy, want)
	}
}

// TestUnexpectedSkipFailsTheKernel runs the lists as the VM run does: a
// kernel that skips a test its list does not name fails, and 6.1 passes
// with exactly its known skips.
func TestUnexpectedSkipFailsTheKernel(t *testing.T) {
	suite := &vm.Suite{
		Run:      "^TestPrivileged",
		Packages: []vm.Package{{ImportPath: "github.com/socklb/socklb/tests", Rel: "tests"}},
	}
	skipped := func(name string) vm.TestResult {
		return vm.TestResult{Name: name, Action: "skip", Output: []string{"    destroy_test.go:24: " + lacksSockDestroy}}
	}
	var on61 []vm.TestResult
	for _, e := range expectedSkips["6.1"] {
		on61 = append(on61, skipped(e.Test))
	}
	for _, tc := range []struct {
		kernel string
		tests  []vm.TestResult
		fails  bool
	}{
		{"6.1", on61, false},
		{"6.1", append(slices.Clone(on61), skipped("TestPrivilegedIPv6")), true},
		{"6.1", on61[1:], true}, // a listed skip that did not happen
		{"6.12", nil, false},
		{"6.12", []vm.TestResult{skipped("TestPrivilegedRemovedBackendSocketsAreDestroyed")}, true},
		{"host", []vm.TestResult{{Name: "TestPrivilegedIPv6", Action: "skip", Output: []string{"    x_test.go:1: no IPv6"}}}, true},
	} {
		r := &vm.KernelResult{Name: tc.kernel, Packages: []vm.PackageResult{{ImportPath: suite.Packages[0].ImportPath, Tests: tc.tests}}}
		r.SkipMismatches = suite.CheckSkips(r, expectedSkips[tc.kernel], tc.kernel != "host")
		if r.Failed() != tc.fails {
			t.Errorf("%s, skipped %d: failed = %v, want %v (mismatches %v)", tc.kernel, len(tc.tests), r.Failed(), tc.fails, r.SkipMismatches)
		}
	}
}

package main

import (
	"fmt"
	"maps"
	"slices"

	"github.com/socklb/socklb/internal/vm"
)

// lacksSockDestroy is how sandbox.RequireFeature names the loader's
// FeatSockDestroy when its probe found the kfunc absent from the
// kernel's BTF: not a probe that failed ("probe failed: ..."), which
// would be a skip for another reason. main_test checks it against the
// loader.
const lacksSockDestroy = "kernel lacks bpf_sock_destroy kfunc (closing sockets of removed backends) [>= 6.5] " +
	"(kernel BTF has no bpf_sock_destroy: not supported)"

// expectedSkips is, per kernel (the NAME of --kernels, and "host" for
// the native run), every test that kernel skips and the reason. The VMs
// run with SOCKLB_ALLOW_MISSING_FEATURES=1, which lets any test skip on
// any missing feature; this list is what keeps that honest: a skip not
// listed here, one for another reason, and a listed one that did not
// happen (a stale entry) each fail the run. A kernel with no entry here
// cannot be run. The native run sets no SOCKLB_ALLOW_MISSING_FEATURES
// and skips nothing.
var expectedSkips = map[string][]vm.ExpectedSkip{
	// Debian bookworm's kernel: no bpf_sock_destroy (6.5+).
	"6.1": {
		{Package: "tests", Test: "TestPrivilegedRemovedBackendSocketsAreDestroyed", Reason: lacksSockDestroy},
		{Package: "tests", Test: "TestPrivilegedAgentCapabilities/exactly_the_required_set/closes_the_sockets_of_a_removed_backend", Reason: lacksSockDestroy},
		{Package: "tests", Test: "TestPrivilegedFinding9DestroyTCPEndToEnd", Reason: lacksSockDestroy},
	},
	// Debian's 6.12 (bookworm-security) has every feature the loader probes.
	"6.12": nil,
	"host": nil,
}

// checkSkipLists fails unless every kernel the run boots (and the host,
// when it runs natively) has a list in expectedSkips.
func checkSkipLists(kernels []kernelFlag, host bool) error {
	var missing []string
	for _, k := range kernels {
		if _, ok := expectedSkips[k.name]; !ok {
			missing = append(missing, k.name)
		}
	}
	if _, ok := expectedSkips["host"]; host && !ok {
		missing = append(missing, "host")
	}
	if len(missing) > 0 {
		return fmt.Errorf("no list of expected skips for kernel %v in tests/vm/skips.go: add one (empty if it should skip nothing); have %v",
			missing, slices.Sorted(maps.Keys(expectedSkips)))
	}
	return nil
}

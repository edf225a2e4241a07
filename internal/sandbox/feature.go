package sandbox

import (
	"os"
	"testing"
)

// AllowMissingFeaturesEnv, set to 1, lets RequireFeature skip a test on a
// kernel that lacks a feature. The kernel matrix (tests/vm) sets it in its
// VMs, which boot older kernels on purpose, and then checks every skip
// against that kernel's list of expected skips (tests/vm/skips.go): a skip
// not listed, or listed for another reason, fails the run. Everywhere
// else, as on the machines that run CI, a missing feature fails the test:
// a probe that broke must not turn a privileged test into a skip
// unnoticed.
const AllowMissingFeaturesEnv = "SOCKLB_ALLOW_MISSING_FEATURES"

// RequireFeature stops the test when the running kernel lacks a feature
// it needs: available is what the kernel's probe found, name names the
// feature (with its first kernel), detail says why the probe failed. The
// test is skipped with that name where AllowMissingFeaturesEnv allows it,
// and fails otherwise.
func RequireFeature(t testing.TB, available bool, name, detail string) {
	t.Helper()
	if available {
		return
	}
	if os.Getenv(AllowMissingFeaturesEnv) == "1" {
		t.Skipf("kernel lacks %s (%s)", name, detail)
	}
	t.Fatalf("kernel lacks %s (%s); set %s=1 to skip instead on kernels known to lack it", name, detail, AllowMissingFeaturesEnv)
}

// EmulatedEnv, set to 1, says the tests run under CPU emulation: the
// kernel matrix's VMs use qemu's TCG, where code runs tens of times
// slower than natively. A test with a latency bound from an issue keeps
// that bound natively and may allow more where Emulated reports true.
const EmulatedEnv = "SOCKLB_EMULATED"

// Emulated reports whether EmulatedEnv says the tests run emulated.
func Emulated() bool { return os.Getenv(EmulatedEnv) == "1" }

package sandbox

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRequireFeatureHelper is run by TestRequireFeature in a child process.
func TestRequireFeatureHelper(t *testing.T) {
	if os.Getenv("SOCKLB_FEATURE_HELPER") != "1" {
		t.Skip("helper for TestRequireFeature")
	}
	RequireFeature(t, true, "present feature [>= 1.0]", "")
	RequireFeature(t, false, "new feature [>= 9.9]", "not supported")
	t.Log("went on after a missing feature")
}

func TestRequireFeature(t *testing.T) {
	for _, tc := range []struct {
		allow string
		want  string
	}{
		{"1", "--- SKIP"},
		{"", "--- FAIL"},
		{"yes", "--- FAIL"}, // only 1 allows skipping
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRequireFeatureHelper$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "SOCKLB_FEATURE_HELPER=1", AllowMissingFeaturesEnv+"="+tc.allow)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "kernel lacks new feature [>= 9.9] (not supported)") {
			t.Errorf("%s=%q: want %s naming the feature:\n%s", AllowMissingFeaturesEnv, tc.allow, tc.want, out)
		}
		if strings.Contains(string(out), "went on") {
			t.Errorf("%s=%q: the test went on after a missing feature:\n%s", AllowMissingFeaturesEnv, tc.allow, out)
		}
	}
}

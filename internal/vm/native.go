package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// RunNative runs suite on the host's own kernel: the same binaries and
// flags as in the VMs, each in its package directory, but without
// AllowMissingFeatures, so a feature missing here fails as it does in
// `make test`. Its skips are checked against Suite.ExpectedSkips["host"].
func RunNative(ctx context.Context, suite *Suite, progress io.Writer) (*KernelResult, error) {
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return nil, err
	}
	res := &KernelResult{Name: "host", Release: strings.TrimSpace(string(release)), How: "native"}
	start := time.Now()
	for _, p := range suite.Packages {
		// The binary's own -test.timeout fires first; this bounds a
		// binary that hangs outside the tests.
		pctx, cancel := context.WithTimeout(ctx, suite.Timeout+time.Minute)
		cmd := exec.CommandContext(pctx, p.Binary, suite.testArgs(false)...)
		cmd.Dir = p.Dir
		cmd.Env = append(withoutEnv(withoutEnv(os.Environ(), allowMissingFeaturesEnv), emulatedEnv), agentBinEnv+"="+suite.Agent)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		pr := PackageResult{ImportPath: p.ImportPath, Raw: out.Bytes()}
		var exitErr *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exitErr):
			pr.ExitCode = exitErr.ExitCode()
		default:
			return nil, fmt.Errorf("run %s: %w", p.Binary, err)
		}
		if pr.ExitCode == -1 && pctx.Err() != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s did not finish", p.ImportPath))
		}
		if pr.Tests, err = Test2JSON(ctx, pr.Raw); err != nil {
			return nil, err
		}
		if progress != nil {
			for _, t := range pr.Tests {
				if !strings.Contains(t.Name, "/") {
					fmt.Fprintf(progress, "[host] --- %s: %s (%.2fs)\n", strings.ToUpper(t.Action), t.Name, t.Elapsed.Seconds())
				}
			}
		}
		res.Packages = append(res.Packages, pr)
	}
	res.Wall = time.Since(start)
	res.SkipMismatches = suite.CheckSkips(res, suite.ExpectedSkips[res.Name], false)
	return res, nil
}

// withoutEnv drops name from env.
func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

package harness

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/socklb/socklb/tests/e2e/cluster"
)

// dumpLogs prints the tail of each of the node's logs.
func (n *Node) dumpLogs(t testing.TB) {
	for _, path := range n.logs {
		data, err := cluster.ReadTail(path, logTailBytes)
		if err != nil {
			t.Logf("%s: %v", path, err)
			continue
		}
		t.Logf("--- %s (last %d KiB at most) ---\n%s", filepath.Base(path), logTailBytes>>10, data)
	}
}

// copyLogs copies the node's logs and configuration files into dir.
func (n *Node) copyLogs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := append(slices.Clone(n.logs), n.cfg.containerdConfig(), n.cfg.containerdV2Config(), n.cfg.kubeletConfig(),
		filepath.Join(n.cfg.cniConfDir(), cniConfName))
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logWriter sends build progress to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

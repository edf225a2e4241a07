package harness

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dumpLogs prints the tail of each of the node's logs.
func (n *Node) dumpLogs(t testing.TB) {
	for _, path := range n.logs {
		data, err := readTail(path, logTailBytes)
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

func readTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > max {
		if _, err := f.Seek(fi.Size()-max, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(f)
}

// logWriter sends build progress to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

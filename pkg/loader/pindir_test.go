package loader

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/socklb/socklb/internal/sandbox"
)

// TestPrivilegedPinDirectoryMode: the pin directory is created with mode
// 0700; one that someone made looser is left as it is, with a warning.
func TestPrivilegedPinDirectoryMode(t *testing.T) {
	sandbox.RequirePrivileges(t)
	cg := sandbox.NewCgroup(t)
	fs := sandbox.MountBPFFS(t)

	for _, tc := range []struct {
		name     string
		existing os.FileMode // 0: the directory does not exist yet
		warn     bool
	}{
		{"new", 0, false},
		{"existing 0700", 0o700, false},
		{"existing 0755", 0o755, true},
		{"existing 0777", 0o777, true},
		{"existing 0710", 0o710, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(fs, strings.ReplaceAll(tc.name, " ", "-"), "socklb")
			t.Cleanup(func() { _ = Cleanup(dir, nil) })
			if tc.existing != 0 {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				// Chmod, since Mkdir's mode passes through the umask.
				if err := os.Chmod(dir, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			dp, err := Load(Options{BPFFSPath: dir, CgroupPath: cg.Path(), Logger: log})
			if err != nil {
				t.Fatalf("load: %+v", err)
			}
			dp.Close()
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.existing
			if want == 0 {
				want = 0o700
			}
			if perm := fi.Mode().Perm(); perm != want {
				t.Errorf("pin directory mode %#o, want %#o", perm, want)
			}
			warned := strings.Contains(logs.String(), "level=WARN msg=\"pin directory is open to other users; leaving its mode as its owner set it\"")
			if warned != tc.warn {
				t.Errorf("warned %v, want %v; log:\n%s", warned, tc.warn, logs.String())
			}
			if want := fmt.Sprintf("mode=%#o", tc.existing); tc.warn && !strings.Contains(logs.String(), want) {
				t.Errorf("the warning does not say %s:\n%s", want, logs.String())
			}
		})
	}
}

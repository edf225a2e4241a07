package loader

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb/internal/sandbox"
)

// TestFinding4CleanupRefusesOrdinaryDirectory: cleanup of a pin path on
// an ordinary filesystem removes nothing, even files with socklb's names.
func TestFinding4CleanupRefusesOrdinaryDirectory(t *testing.T) {
	dir := t.TempDir()
	names := []string{"socklb_svc_v3", "socklb_be_v2", "link_sock4_connect", "notes.txt"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	err := Cleanup(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if !errors.Is(err, ErrNotBPFFS) {
		t.Errorf("cleanup of an ordinary directory: %v, want ErrNotBPFFS", err)
	}
	for _, n := range names {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err != nil || string(b) != "precious" {
			t.Errorf("%s after cleanup: %q, %v; want it untouched", n, b, err)
		}
	}
	if strings.Contains(logs.String(), "unpinned") || strings.Contains(logs.String(), "detached") {
		t.Errorf("cleanup logged removals:\n%s", logs.String())
	}
}

// TestPrivilegedFinding4RunDoesNotChmodForeignDir: a start refuses a pin
// path off bpffs before changing it, and leaves the mode of an existing
// directory on bpffs as it was (with a warning).
func TestPrivilegedFinding4RunDoesNotChmodForeignDir(t *testing.T) {
	sandbox.RequirePrivileges(t)
	cg := sandbox.NewCgroup(t)

	shared := t.TempDir()
	if err := os.Chmod(shared, os.ModePerm|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{shared, filepath.Join(shared, "socklb")} {
		_, err := Load(Options{BPFFSPath: dir, CgroupPath: cg.Path()})
		if !errors.Is(err, ErrNotBPFFS) {
			t.Errorf("pins at %s: %v, want ErrNotBPFFS", dir, err)
		}
	}
	fi, err := os.Stat(shared)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&(os.ModePerm|os.ModeSticky) != os.ModePerm|os.ModeSticky {
		t.Errorf("mode of the refused directory changed to %v, want 1777", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(shared, "socklb")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused start created its pin directory off bpffs: %v", err)
	}

	// On bpffs, an existing looser directory is someone else's choice.
	dir := filepath.Join(sandbox.MountBPFFS(t), "shared")
	t.Cleanup(func() { _ = Cleanup(dir, nil) })
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, os.ModePerm|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	dp, err := Load(Options{BPFFSPath: dir, CgroupPath: cg.Path(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	dp.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != os.ModePerm|os.ModeSticky {
		t.Errorf("existing pin directory's mode: %v (%v), want 1777 kept", fi.Mode(), err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "mode=0777") {
		t.Errorf("no warning about the open pin directory:\n%s", logs.String())
	}
}

// TestPrivilegedFinding4FailedStartLeavesNothing: a start that fails
// leaves no directory or pin it made behind.
func TestPrivilegedFinding4FailedStartLeavesNothing(t *testing.T) {
	sandbox.RequirePrivileges(t)
	cg := sandbox.NewCgroup(t)
	fs := sandbox.MountBPFFS(t)

	top := filepath.Join(fs, "a")
	dir := filepath.Join(top, "b", "socklb")
	t.Cleanup(func() { _ = Cleanup(dir, nil) })
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"not a cgroup", Options{BPFFSPath: dir, CgroupPath: t.TempDir()}},
		// The kernel refuses a map this large (E2BIG) after the
		// directories are made and other maps may be pinned.
		{"map too large", Options{BPFFSPath: dir, CgroupPath: cg.Path(), MaxServiceEntries: 1<<32 - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if dp, err := Prepare(tc.opts); err == nil {
				dp.Close()
				t.Fatal("prepare succeeded")
			}
			if _, err := os.Stat(top); !errors.Is(err, os.ErrNotExist) {
				entries, _ := os.ReadDir(dir)
				t.Errorf("after a failed start %s exists (%v); pins: %v", top, err, entries)
			}
		})
	}

	// The agent's way: it locks the directory (creating it), then
	// prepares.
	ctx := t.Context()
	lock, err := AcquireLock(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if dp, err := Prepare(Options{BPFFSPath: dir, CgroupPath: t.TempDir(), Lock: lock}); err == nil {
		dp.Close()
		t.Fatal("prepare succeeded")
	}
	if _, err := os.Stat(top); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed start with a lock %s exists (%v)", top, err)
	}
	lock.Close()

	// A failed start in an existing directory keeps the directory and
	// what was there.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	keep, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	if err := keep.Pin(filepath.Join(dir, "other_tool_map")); err != nil {
		t.Fatal(err)
	}
	if dp, err := Prepare(Options{BPFFSPath: dir, CgroupPath: cg.Path(), MaxServiceEntries: 1<<32 - 1}); err == nil {
		dp.Close()
		t.Fatal("prepare succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "other_tool_map" {
		t.Errorf("after a failed start in an existing directory: %v (%v), want only other_tool_map", entries, err)
	}
}

// TestPrivilegedFinding4CleanupLeavesForeignPins: cleanup removes what
// socklb pinned and nothing else.
func TestPrivilegedFinding4CleanupLeavesForeignPins(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)
	dp := mustLoad(t, opts)
	dp.Close()

	keep := []string{
		"cilium_lb4_services_v2", // another tool's map
		"README",                 // an ordinary-looking name
		"link_foreign",           // a map where a link would be
	}
	for _, n := range keep {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	// A socklb name on something that is not a map.
	if err := os.Mkdir(filepath.Join(dir, "socklb_svc_v2"), 0o700); err != nil {
		t.Fatal(err)
	}
	keep = append(keep, "socklb_svc_v2")

	var logs bytes.Buffer
	if err := Cleanup(dir, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if got := attachedPrograms(t, cg.Path()); len(got) != 0 {
		t.Errorf("after cleanup %d programs are still attached", len(got))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the pin directory holding foreign pins is gone: %v", err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	slices.Sort(left)
	slices.Sort(keep)
	if !slices.Equal(left, keep) {
		t.Errorf("after cleanup %v are left, want exactly %v", left, keep)
	}
	for _, n := range keep {
		if !strings.Contains(logs.String(), filepath.Join(dir, n)) {
			t.Errorf("cleanup did not log that it left %s:\n%s", n, logs.String())
		}
	}
}

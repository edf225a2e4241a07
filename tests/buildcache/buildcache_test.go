package buildcache

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPackageBuiltName(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"go.etcd.io/etcd/server/v3", "server"},
		{"k8s.io/kubernetes/cmd/kubelet", "kubelet"},
		{"github.com/coredns/coredns", "coredns"},
		{"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2", "containerd-shim-runc-v2"},
		{"example.com/tool/vendor", "vendor"},
		{"example.com/tool/v", "v"},
	} {
		if got := (Package{Path: tc.path}).built(); got != tc.want {
			t.Errorf("%s builds %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestStampSeparatesParts(t *testing.T) {
	if Stamp([]byte("ab"), []byte("c")) == Stamp([]byte("a"), []byte("bc")) {
		t.Error("Stamp(ab, c) == Stamp(a, bc)")
	}
	if a, b := Stamp([]byte("x"), nil), Stamp([]byte("x"), nil); a != b {
		t.Errorf("Stamp is not deterministic: %s, %s", a, b)
	}
}

// fakeSet is a set whose Build writes its files as shell scripts and
// counts its calls.
func fakeSet(stamp string, builds *int, files ...string) Set {
	return Set{
		Name:  "fake-v1",
		Files: files,
		Stamp: stamp,
		Build: func(_ context.Context, dir string, _ io.Writer) error {
			*builds++
			for _, f := range files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/sh\n"), 0o755); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func TestEnsureBuildsOnceAndRebuildsWhenStale(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SOCKLB_E2E_CACHE", cache)
	ctx := context.Background()
	builds := 0

	res, err := Ensure(ctx, fakeSet("s1", &builds, "a", "b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Built || builds != 1 || res.Dir != filepath.Join(cache, "fake-v1") || res.Path("a") != filepath.Join(cache, "fake-v1", "a") {
		t.Fatalf("first Ensure: %+v after %d builds", res, builds)
	}
	if stamp, _ := os.ReadFile(filepath.Join(res.Dir, "stamp")); string(stamp) != "s1\n" {
		t.Errorf("stamp %q", stamp)
	}

	if res, err = Ensure(ctx, fakeSet("s1", &builds, "a", "b"), nil); err != nil || res.Built || builds != 1 {
		t.Fatalf("up-to-date Ensure: %+v, %v after %d builds", res, err, builds)
	}
	if res, err = Ensure(ctx, fakeSet("s2", &builds, "a", "b"), nil); err != nil || !res.Built || builds != 2 {
		t.Fatalf("Ensure with a new stamp: %+v, %v after %d builds", res, err, builds)
	}
	if err := os.Remove(filepath.Join(res.Dir, "b")); err != nil {
		t.Fatal(err)
	}
	if res, err = Ensure(ctx, fakeSet("s2", &builds, "a", "b"), nil); err != nil || !res.Built || builds != 3 {
		t.Fatalf("Ensure with a file missing: %+v, %v after %d builds", res, err, builds)
	}
	if res, err = Ensure(ctx, fakeSet("s2", &builds, "a", "b", "c"), nil); err != nil || !res.Built || builds != 4 {
		t.Fatalf("Ensure with a file added: %+v, %v after %d builds", res, err, builds)
	}
	left, _ := filepath.Glob(filepath.Join(cache, "fake-v1.build-*"))
	if len(left) != 0 {
		t.Errorf("build directories left: %v", left)
	}
}

func TestEnsureFailureKeepsTheOldSet(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SOCKLB_E2E_CACHE", cache)
	ctx := context.Background()
	builds := 0
	if _, err := Ensure(ctx, fakeSet("s1", &builds, "a"), nil); err != nil {
		t.Fatal(err)
	}
	// A stale build directory of a process that died, and one of another
	// set, which is not ours to remove.
	for _, d := range []string{"fake-v1.build-123", "fake-v1-node.build-456"} {
		if err := os.Mkdir(filepath.Join(cache, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	boom := errors.New("boom")
	failing := fakeSet("s2", &builds, "a")
	failing.Build = func(context.Context, string, io.Writer) error { return boom }
	if _, err := Ensure(ctx, failing, nil); !errors.Is(err, boom) {
		t.Fatalf("failing build: %v, want %v", err, boom)
	}
	lazy := fakeSet("s2", &builds, "a")
	lazy.Build = func(context.Context, string, io.Writer) error { return nil }
	if _, err := Ensure(ctx, lazy, nil); err == nil || !strings.Contains(err.Error(), "no executable a") {
		t.Fatalf("build that writes nothing: %v", err)
	}
	if stamp, _ := os.ReadFile(filepath.Join(cache, "fake-v1", "stamp")); string(stamp) != "s1\n" {
		t.Errorf("after failed builds the set has stamp %q, want the old one", stamp)
	}
	left, _ := filepath.Glob(filepath.Join(cache, "*.build-*"))
	if len(left) != 1 || filepath.Base(left[0]) != "fake-v1-node.build-456" {
		t.Errorf("build directories left: %v, want only the other set's", left)
	}
}

func TestEnsureRejectsBadSets(t *testing.T) {
	t.Setenv("SOCKLB_E2E_CACHE", t.TempDir())
	builds := 0
	for _, set := range []Set{
		fakeSet("", &builds, "a"),
		fakeSet("s", &builds),
		func() Set { s := fakeSet("s", &builds, "a"); s.Name = "a/b"; return s }(),
	} {
		if _, err := Ensure(context.Background(), set, nil); err == nil {
			t.Errorf("Ensure(%+v) succeeded", set)
		}
	}
	if builds != 0 {
		t.Errorf("%d builds of bad sets", builds)
	}
}

func TestEnsureWaitsForTheLockWithinItsContext(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SOCKLB_E2E_CACHE", cache)
	unlock, err := lock(context.Background(), filepath.Join(cache, "fake-v1.lock"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	// flock locks belong to the open file, so a second open in this
	// process waits like another process would.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	builds := 0
	if _, err := Ensure(ctx, fakeSet("s1", &builds, "a"), nil); !errors.Is(err, context.Canceled) || builds != 0 {
		t.Fatalf("Ensure while another holds the lock: %v after %d builds, want context.Canceled", err, builds)
	}
}

// TestEnsureDataFiles: a set's Data files need not be executable, but a
// missing one fails the build and, later, means rebuild.
func TestEnsureDataFiles(t *testing.T) {
	t.Setenv("SOCKLB_E2E_CACHE", t.TempDir())
	ctx := context.Background()
	builds := 0
	set := Set{Name: "data-v1", Data: []string{"rootfs.tar"}, Stamp: "s1",
		Build: func(_ context.Context, dir string, _ io.Writer) error {
			builds++
			return os.WriteFile(filepath.Join(dir, "rootfs.tar"), []byte("tar"), 0o644)
		}}
	res, err := Ensure(ctx, set, nil)
	if err != nil || !res.Built {
		t.Fatalf("first Ensure: %+v, %v", res, err)
	}
	if res, err = Ensure(ctx, set, nil); err != nil || res.Built || builds != 1 {
		t.Fatalf("second Ensure rebuilt or failed: %+v, %v (%d builds)", res, err, builds)
	}
	if err := os.Remove(res.Path("rootfs.tar")); err != nil {
		t.Fatal(err)
	}
	if res, err = Ensure(ctx, set, nil); err != nil || !res.Built || builds != 2 {
		t.Fatalf("a missing data file did not rebuild: %+v, %v", res, err)
	}
	set.Build = func(context.Context, string, io.Writer) error { return nil }
	set.Stamp = "s2"
	if _, err := Ensure(ctx, set, nil); err == nil || !strings.Contains(err.Error(), "no file rootfs.tar") {
		t.Errorf("a build that wrote no data file: %v", err)
	}
}

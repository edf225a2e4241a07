package netnsid

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
)

func TestPrivilegedCookie(t *testing.T) {
	sandbox.RequirePrivileges(t)
	here, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	self, err := Cookie("/proc/self/ns/net")
	if err != nil || self != here {
		t.Fatalf("Cookie(/proc/self/ns/net) = %d, %v; want this namespace's %d", self, err, here)
	}
	n := sandbox.NewNetns(t)
	there, err := Cookie(n.Path())
	if err != nil || there == here || there == 0 {
		t.Fatalf("Cookie(%s) = %d, %v; want a cookie other than this namespace's %d", n.Path(), there, err, here)
	}
	// The same namespace by another path: a process in it.
	again := 0
	if err := n.Do(func() error {
		c, err := Current()
		if c == there {
			again++
		}
		return err
	}); err != nil || again != 1 {
		t.Errorf("inside %s the cookie is not %d (%v)", n.Path(), there, err)
	}
	// The fallback for kernels without NS_GET_ID (6.1) enters the
	// namespace: never on the main thread, so that /proc/self stays
	// this process's own namespace however often it runs.
	for range 200 {
		c, err := onOtherThread(func() (uint64, error) {
			if unix.Gettid() == unix.Getpid() {
				return 0, errors.New("ran on the main thread")
			}
			return cookieOnThisThread(n.Path())
		})
		if err != nil || c != there {
			t.Fatalf("entering %s: %d, %v; want %d", n.Path(), c, err, there)
		}
	}
	if self, err := Cookie("/proc/self/ns/net"); err != nil || self != here {
		t.Fatalf("after entering %s 200 times, /proc/self/ns/net is %d (%v), want %d", n.Path(), self, err, here)
	}

	// Not a namespace: a file, and a FIFO that must not hang.
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, fifo, "/proc/self/ns/mnt", "/dev/null"} {
		if _, err := Cookie(p); !errors.Is(err, ErrNotNetns) {
			t.Errorf("Cookie(%s) = %v, want ErrNotNetns", p, err)
		}
	}
	if _, err := Cookie(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Cookie of a missing path = %v, want ErrNotExist", err)
	}
}

package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// MountBPFFS mounts a fresh bpffs on a new temporary directory and returns
// the directory. When the test ends it is unmounted (detached: pins held
// open elsewhere live on until closed) and the directory removed.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	dir, cleanup, err := CreateBPFFS("socklb-bpffs-")
	if err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}

// CreateBPFFS is MountBPFFS for programs: it mounts a fresh bpffs on a new
// directory under os.TempDir() named prefix+<random>. cleanup unmounts it and
// removes the (then empty) directory.
func CreateBPFFS(prefix string) (dir string, cleanup func() error, err error) {
	if err := checkPrefix(prefix); err != nil {
		return "", nil, err
	}
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	unmount, err := MountBPFFSAt(dir)
	if err != nil {
		return "", nil, errors.Join(err, os.Remove(dir))
	}
	return dir, func() error {
		if err := unmount(); err != nil {
			return err
		}
		// Remove, never RemoveAll: if the unmount had not happened this
		// fails instead of unlinking pins.
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}, nil
}

// MountBPFFSAt mounts a fresh bpffs (mode 0700) on dir, which must be an
// existing empty directory not on sysfs (so never /sys/fs/bpf, the host's
// shared place). cleanup detaches the mount; it does not remove dir.
func MountBPFFSAt(dir string) (cleanup func() error, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", dir, err)
	}
	switch st.Type {
	case unix.SYSFS_MAGIC:
		return nil, fmt.Errorf("refusing to mount bpffs on sysfs (%s): use a private directory", dir)
	case unix.BPF_FS_MAGIC:
		return nil, fmt.Errorf("%s is already a bpffs", dir)
	}
	if err := checkEmptyDir(dir); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return nil, errors.Join(fmt.Errorf("%s: bpffs not visible after mount (%v)", dir, err),
			unix.Unmount(dir, unix.MNT_DETACH))
	}
	var (
		once     sync.Once
		cleanErr error
	)
	return func() error {
		once.Do(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				cleanErr = fmt.Errorf("unmount %s: %w", dir, err)
			}
		})
		return cleanErr
	}, nil
}

func checkEmptyDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err == nil {
			return fmt.Errorf("%s is not empty: refusing to hide its contents under a mount", dir)
		}
		return err
	}
	return nil
}

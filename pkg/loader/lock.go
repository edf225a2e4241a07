package loader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse: another process (an agent, or a cleanup) holds the lock on
// the pin directory.
var ErrInUse = errors.New("pin directory is held by another agent")

// How often a waiting agent retries the lock, and how often it says it is
// still waiting. Variables so that tests can shorten them.
var (
	lockRetryInterval = 500 * time.Millisecond
	lockLogInterval   = 30 * time.Second
)

// Lock is an exclusive flock on the pin directory itself: the one writer
// of a pin directory holds it for as long as it runs. It is released by
// Close or when the process ends, however it ends.
type Lock struct {
	f   *os.File
	dir string
	// created are the directories made to take the lock, topmost first;
	// a failed start removes them again.
	created []string
}

// Dir is the locked pin directory.
func (l *Lock) Dir() string { return l.dir }

// takeCreated hands the directories made for the lock to the first
// Prepare, which removes them if it fails.
func (l *Lock) takeCreated() []string {
	if l == nil {
		return nil
	}
	c := l.created
	l.created = nil
	return c
}

// Close releases the lock.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// AcquireLock creates the pin directory if needed (only on bpffs, see
// prepareDir) and locks it. While another process holds the lock it
// waits, retrying every half second, and logs that it waits, with the
// holder's pid, at once and then every 30 s; it gives up only when ctx
// ends. A waiting agent, not a failing one: a DaemonSet update starts the
// new pod while the old one is still terminating.
func AcquireLock(ctx context.Context, dir string, log *slog.Logger) (*Lock, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		lastLog time.Time
		waited  bool
		// prepareDir warns about a loose mode once, not every retry.
		dirLog = log
	)
	for {
		l, err := tryLock(dir, true, dirLog)
		dirLog = slog.New(slog.DiscardHandler)
		if err == nil {
			if waited {
				log.Info("pin directory lock acquired", "bpffs", dir)
			}
			return l, nil
		}
		if !errors.Is(err, ErrInUse) {
			return nil, err
		}
		if !waited || time.Since(lastLog) >= lockLogInterval {
			pid, _, _ := LockHolder(dir)
			log.Warn("pin directory is held by another agent; waiting", "bpffs", dir, "holder_pid", pidString(pid))
			lastLog = time.Now()
		}
		waited = true
		t := time.NewTimer(lockRetryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for the lock on %s: %w", dir, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// tryLock takes the lock without waiting; create says whether to make
// the directory when it does not exist. A held lock is ErrInUse, naming
// the holder.
func tryLock(dir string, create bool, log *slog.Logger) (*Lock, error) {
	dir = filepath.Clean(dir)
	var created []string
	if create {
		var err error
		if created, err = prepareDir(dir, log); err != nil {
			return nil, err
		}
	}
	for range 10 {
		f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if create && errors.Is(err, fs.ErrNotExist) {
			// Removed since prepareDir made or found it (a cleanup of
			// the holder before us): make it again.
			if created, err = prepareDir(dir, log); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pin directory for locking: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				pid, _, _ := LockHolder(dir)
				return nil, fmt.Errorf("%s: %w (pid %s)", dir, ErrInUse, pidString(pid))
			}
			return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
		}
		// The holder before us may have removed the directory (a
		// cleanup) or replaced it: a lock on an unlinked inode guards
		// nothing.
		if same, err := sameInode(f, dir); err != nil || !same {
			f.Close()
			if create && errors.Is(err, os.ErrNotExist) {
				if created, err = prepareDir(dir, log); err != nil {
					return nil, err
				}
			} else if err != nil {
				return nil, fmt.Errorf("pin directory %s: %w", dir, err)
			}
			continue
		}
		return &Lock{f: f, dir: dir, created: created}, nil
	}
	return nil, fmt.Errorf("lock pin directory %s: it keeps being replaced", dir)
}

func sameInode(f *os.File, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Stat(path, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, os.ErrNotExist
		}
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// LockHolder says whether some process holds the lock on dir and, when
// /proc/locks names it in this pid namespace, which (pid 0: unknown).
func LockHolder(dir string) (pid int, held bool, err error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false, fmt.Errorf("open pin directory: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		return 0, false, unix.Flock(int(f.Fd()), unix.LOCK_UN)
	case !errors.Is(err, unix.EWOULDBLOCK):
		return 0, false, fmt.Errorf("probe lock on %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, true, fmt.Errorf("stat %s: %w", dir, err)
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0, true, nil
	}
	return flockHolder(string(locks), unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino), true, nil
}

// flockHolder finds, in the text of /proc/locks, the pid holding a flock
// on the inode; 0 if no line says. Lines look like
//
//	3: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF
//
// (device numbers in hex); waiters have "->" after the number and are
// skipped.
func flockHolder(locks string, major, minor uint32, ino uint64) int {
	for line := range strings.Lines(locks) {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil {
			continue
		}
		dev := strings.Split(f[5], ":")
		if len(dev) != 3 {
			continue
		}
		ma, err1 := strconv.ParseUint(dev[0], 16, 32)
		mi, err2 := strconv.ParseUint(dev[1], 16, 32)
		in, err3 := strconv.ParseUint(dev[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		if uint32(ma) == major && uint32(mi) == minor && in == ino && pid > 0 {
			return pid
		}
	}
	return 0
}

func pidString(pid int) string {
	if pid <= 0 {
		return "unknown"
	}
	return strconv.Itoa(pid)
}

package filesource

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lease takes a read lease on f (opened read-only). The kernel grants it only
// while no process has the file open for writing, and refuses it with EAGAIN
// otherwise; a writer that opens the file while we hold it waits until we
// release it. So what is read under the lease is never a write in progress,
// pauses included. Any other error means leases do not work here (the
// filesystem, fs.leases-enable, neither the file's owner nor CAP_LEASE):
// errNoLease.
func lease(f *os.File) (release func() error, err error) {
	if err := setLease(f, unix.F_RDLCK); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return nil, errBusy
		}
		return nil, fmt.Errorf("%w: %w", errNoLease, err)
	}
	return func() error {
		if err := setLease(f, unix.F_UNLCK); err != nil {
			return fmt.Errorf("release lease: %w", err)
		}
		return nil
	}, nil
}

func setLease(f *os.File, typ int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		_, opErr = unix.FcntlInt(fd, unix.F_SETLEASE, typ)
	}); err != nil {
		return err
	}
	return opErr
}

// openFlags: O_NONBLOCK so that a FIFO at the path cannot block the open; it
// changes nothing for a regular file.
const openFlags = os.O_RDONLY | unix.O_NONBLOCK

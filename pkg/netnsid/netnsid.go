// Package netnsid finds the cookie the kernel gives a network namespace
// (SO_NETNS_COOKIE, Linux 5.14+): what bpf_get_netns_cookie returns in
// socklb's programs, and so how they key a client's affinity.
package netnsid

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotNetns: the path is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// nsGetID is NS_GET_ID (_IOR(0xb7, 0xd, __u64)): the namespace's cookie
// without entering it. Linux 6.18 has it, 6.1 does not.
const nsGetID = 0x8008b70d

// Cookie returns the cookie of the network namespace at path (a bind
// mount under /var/run/netns, or /proc/PID/ns/net). Where the kernel
// lacks NS_GET_ID it enters the namespace on a thread of its own, which
// it never hands back to the Go scheduler: that thread ends with the
// goroutine, whatever namespace it is in.
func Cookie(path string) (uint64, error) {
	if c, err := byIoctl(path); err == nil || !errors.Is(err, errNoIoctl) {
		return c, err
	}
	return onOtherThread(func() (uint64, error) { return cookieOnThisThread(path) })
}

// onOtherThread runs fn on a thread locked to it that is not the
// process's main thread, and never unlocks it. The main thread matters:
// Go keeps it (wedged) when its locked goroutine exits instead of ending
// it, and /proc/self names the process by that thread, so a main thread
// left in another namespace would make /proc/self/ns/net lie.
func onOtherThread(fn func() (uint64, error)) (uint64, error) {
	type result struct {
		cookie uint64
		err    error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Holding the main thread, ask again: the goroutine started
			// now cannot run on it while it is locked to us; then give it
			// back, untouched.
			c, err := onOtherThread(fn)
			runtime.UnlockOSThread()
			done <- result{c, err}
			return
		}
		// Never unlocked: the thread dies with us.
		c, err := fn()
		done <- result{c, err}
	}()
	r := <-done
	return r.cookie, r.err
}

var errNoIoctl = errors.New("NS_GET_ID not supported")

func byIoctl(path string) (uint64, error) {
	fd, err := open(path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var id uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetID, uintptr(unsafe.Pointer(&id)))
	switch errno {
	case 0:
		return id, nil
	case unix.ENOTTY, unix.EINVAL:
		return 0, errNoIoctl
	}
	return 0, fmt.Errorf("netns %s: NS_GET_ID: %w", path, errno)
}

// nsGetNSType is NS_GET_NSTYPE (_IO(0xb7, 0x3), Linux 4.11): the kind of
// namespace a file is.
const nsGetNSType = 0xb703

// open opens a network namespace file. It looks at what path is through
// an O_PATH handle first, which opens nothing (a device's open can have
// effects of its own), and opens it for reading only when it is a
// network namespace.
func open(path string) (int, error) {
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(pfd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(pfd, &st); err != nil {
		return -1, fmt.Errorf("netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return -1, fmt.Errorf("%s: %w", path, ErrNotNetns)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", path, err)
	}
	// A namespace file of another kind (mnt, pid, …) has an id too.
	kind, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetNSType, 0)
	if errno != 0 || kind != unix.CLONE_NEWNET {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", path, ErrNotNetns)
	}
	return fd, nil
}

func cookieOnThisThread(path string) (uint64, error) {
	fd, err := open(path)
	if err != nil {
		return 0, err
	}
	h := netns.NsHandle(fd)
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return 0, fmt.Errorf("enter netns %s: %w", path, err)
	}
	return Current()
}

// Current returns the cookie of the calling thread's network namespace.
func Current() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

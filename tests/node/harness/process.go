package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// namespaces are the kinds of namespace a node has of its own, as named
// under /proc/PID/ns.
var namespaces = []string{"mnt", "pid", "net", "uts", "ipc"}

// proc is a process this package started, with the one that does the work
// when it runs behind a wrapper: unshare's forked child (the node's PID
// 1), or the program nsenter forks inside the node's PID namespace. The
// inner process is signalled through a pidfd, so never another process
// that reused its PID.
type proc struct {
	name    string
	cmd     *exec.Cmd // the wrapper (unshare, nsenter), our child
	done    chan struct{}
	waitErr error
	inner   int // host PID of the process behind the wrapper
	pidfd   int // of inner; -1 when not open
}

// startProc starts cmd (already set up) and waits, for at most timeout,
// until its child has exec'd wantExe. The wrapper is reaped by a goroutine
// of its own; done is closed when it has exited.
func startProc(name string, cmd *exec.Cmd, start func() error, wantExe string, timeout time.Duration) (*proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL // the wrapper dies with the test
	if start == nil {
		start = cmd.Start
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), pidfd: -1}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := p.findInner(wantExe, timeout); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// findInner waits for the wrapper's only child to run wantExe, then opens
// a pidfd for it. The child is checked again after the pidfd is open, so
// the pidfd is known to be the child's.
func (p *proc) findInner(wantExe string, timeout time.Duration) error {
	want, err := filepath.EvalSymlinks(wantExe)
	if err != nil {
		return err
	}
	wrapper := p.cmd.Process.Pid
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("%s: %s exited before it ran %s (%v)", p.name, filepath.Base(p.cmd.Path), wantExe, p.waitErr)
		default:
		}
		if pid := onlyChild(wrapper); pid > 0 {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == want {
				fd, err := unix.PidfdOpen(pid, 0)
				if err == nil && onlyChild(wrapper) == pid {
					p.inner, p.pidfd = pid, fd
					return nil
				}
				if err == nil {
					unix.Close(fd)
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no child running %s after %v", p.name, wantExe, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// onlyChild returns the PID of pid's only child, or 0.
func onlyChild(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) != 1 {
		return 0
	}
	c, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return c
}

// exited reports whether the wrapper has exited (and so the process
// behind it: nsenter and unshare wait for their child).
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the inner process through its pidfd.
func (p *proc) signal(sig unix.Signal) error {
	if p.pidfd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// stop sends sig to the inner process and waits up to grace for the
// wrapper to exit (nsenter and unshare exit when their child has), then
// kills both and waits up to 10 s more. It is harmless when the process
// has exited already.
func (p *proc) stop(sig unix.Signal, grace time.Duration) error {
	if p.exited() {
		p.closePidfd()
		return nil
	}
	var errs []error
	if err := p.signal(sig); err != nil {
		errs = append(errs, fmt.Errorf("%v %s: %w", sig, p.name, err))
	}
	select {
	case <-p.done:
		p.closePidfd()
		return errors.Join(errs...)
	case <-time.After(grace):
	}
	if err := p.kill(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// kill sends SIGKILL to the inner process and the wrapper and waits up to
// 10 s for the wrapper to be reaped.
func (p *proc) kill() error {
	var errs []error
	if err := p.signal(unix.SIGKILL); err != nil {
		errs = append(errs, fmt.Errorf("SIGKILL %s: %w", p.name, err))
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("kill %s's %s: %w", p.name, filepath.Base(p.cmd.Path), err))
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		errs = append(errs, fmt.Errorf("%s (pid %d) did not exit within 10 s of SIGKILL", p.name, p.cmd.Process.Pid))
	}
	p.closePidfd()
	return errors.Join(errs...)
}

func (p *proc) closePidfd() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// nsInode is the inode of /proc/PID/ns/KIND, which names a namespace.
func nsInode(pid int, kind string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

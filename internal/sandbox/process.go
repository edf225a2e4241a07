package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// StartProcess starts cmd inside ns and, when cg is not nil, inside cg from
// its first instruction (clone3 CLONE_INTO_CGROUP), so every socket it opens
// is in both. When the test ends the process is killed (through its pidfd,
// so only this process) and reaped. The test may call cmd.Wait itself to
// wait for a normal exit.
func StartProcess(t testing.TB, cmd *exec.Cmd, ns *Netns, cg *Cgroup) {
	t.Helper()
	stop, err := StartProcessIn(cmd, ns, cg)
	if err != nil {
		t.Fatalf("start %s: %v", cmd, err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop %s: %v", cmd, err)
		}
	})
}

// StartProcessIn is StartProcess for programs. stop kills the process if it
// still runs and waits for it; it returns no error for the kill itself or a
// non-zero exit (see cmd.ProcessState). cmd.SysProcAttr.Pdeathsig is set to
// SIGKILL unless already set, so the child dies with us if we are killed.
func StartProcessIn(cmd *exec.Cmd, ns *Netns, cg *Cgroup) (stop func() error, err error) {
	if ns == nil {
		return nil, errors.New("start process: a netns is required")
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	var origin string
	if cg != nil {
		if err := CheckChildCgroup(cg.path); err != nil {
			return nil, err
		}
		if origin, err = procCgroup("self"); err != nil {
			return nil, err
		}
		fd, err := unix.Open(cg.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup: %w", err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
	}
	// fork/exec happens on the thread that Do switched into ns, and the
	// child inherits that thread's network namespace.
	if err := ns.Do(cmd.Start); err != nil {
		return nil, err
	}
	if cg != nil {
		cg.track(cmd.Process.Pid, origin)
	}
	var (
		once    sync.Once
		stopErr error
	)
	return func() error {
		once.Do(func() {
			if cmd.ProcessState != nil {
				return // the caller waited for it already
			}
			if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				stopErr = fmt.Errorf("kill pid %d: %w", cmd.Process.Pid, err)
				return
			}
			var exitErr *exec.ExitError
			if err := cmd.Wait(); err != nil && !errors.As(err, &exitErr) {
				stopErr = fmt.Errorf("wait pid %d: %w", cmd.Process.Pid, err)
			}
		})
		return stopErr
	}, nil
}

// Package testagent runs socklb's agent binary and "pods" for end-to-end
// tests: it builds the agent once, starts it as a separate process (in a
// test network namespace when asked), watches its log, kills only what it
// started, and asks backends for their names from inside a namespace.
package testagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testlog"
)

// AgentBinEnv names a prebuilt agent binary for Main to use instead of
// building one: the kernel matrix (tests/vm) runs the test binaries in a
// VM that has no Go toolchain.
const AgentBinEnv = "SOCKLB_AGENT_BIN"

// Main is a TestMain for packages that run the agent: it builds the
// agent of the module at moduleRoot into a temporary directory, sets *bin
// to its path, runs the tests and removes the directory. With
// $SOCKLB_AGENT_BIN set it uses that binary and builds nothing.
func Main(m *testing.M, moduleRoot string, bin *string) {
	if prebuilt := os.Getenv(AgentBinEnv); prebuilt != "" {
		if _, err := os.Stat(prebuilt); err != nil {
			fmt.Fprintf(os.Stderr, "$%s: %v\n", AgentBinEnv, err)
			os.Exit(1)
		}
		*bin = prebuilt
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "socklb-agent-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin, err = Build(moduleRoot, dir)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// Build compiles ./cmd/agent of the module at moduleRoot into dir.
func Build(moduleRoot, dir string) (string, error) {
	bin := filepath.Join(dir, "socklb-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/agent")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, out)
	}
	return bin, nil
}

// StopTimeout is how long Stop waits for the agent to exit after its
// signal before it SIGKILLs it and reports that.
const StopTimeout = 10 * time.Second

// Agent is one running agent process.
type Agent struct {
	Cmd *exec.Cmd
	// StopTimeout overrides the package's StopTimeout when set.
	StopTimeout time.Duration
	t           testing.TB
	logs        testlog.Buffer
	done        chan struct{}
}

// Start runs cmd (the agent binary with its arguments). With ns set, the
// process runs inside that network namespace. It is stopped with SIGTERM
// when the test ends; an agent still running StopTimeout after that is
// SIGKILLed and fails the test (the agent must exit on SIGTERM). Its log
// is printed if the test failed.
func Start(t testing.TB, cmd *exec.Cmd, ns *sandbox.Netns) *Agent {
	t.Helper()
	a := &Agent{Cmd: cmd, t: t, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &a.logs, &a.logs
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// The agent dies with the test binary, whatever happens to it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// Tests move themselves into client cgroups; the agent is no client,
	// and must not keep such a cgroup busy when the test removes it.
	home, err := os.Open(sandbox.StartCgroup())
	if err != nil {
		t.Fatalf("open the test's own cgroup: %v", err)
	}
	defer home.Close()
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(home.Fd())
	start := cmd.Start
	if ns != nil {
		// A child forked on a thread inside ns inherits ns.
		start = func() error { return ns.Do(cmd.Start) }
	}
	if err := start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() {
		_ = cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		if err := a.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("when the test ended: %v", err)
		}
		if t.Failed() {
			t.Logf("agent %d log:\n%s", a.Cmd.Process.Pid, a.Logs())
		}
	})
	return a
}

// Done is closed when the agent process has exited.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Logs returns everything the agent printed so far.
func (a *Agent) Logs() string { return a.logs.String() }

// ErrIgnoredSignal: the agent was still running StopTimeout after the
// signal, and had to be SIGKILLed.
var ErrIgnoredSignal = errors.New("agent did not exit after the signal")

// Stop sends sig to the process this test started (nothing else) and
// waits until it is gone. When it is still running StopTimeout later, Stop
// SIGKILLs it, waits, and returns an error wrapping ErrIgnoredSignal: an
// agent that ignores SIGTERM must not pass. SIGKILL itself cannot be
// ignored. An agent that had already exited is not signalled.
func (a *Agent) Stop(sig syscall.Signal) error {
	select {
	case <-a.done:
		return nil
	default:
	}
	_ = a.Cmd.Process.Signal(sig)
	timeout := a.StopTimeout
	if timeout == 0 {
		timeout = StopTimeout
	}
	select {
	case <-a.done:
		return nil
	case <-time.After(timeout):
		_ = a.Cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("agent %d still ran %s after %v; SIGKILLed it: %w", a.Cmd.Process.Pid, timeout, sig, ErrIgnoredSignal)
	}
}

// Kill stops the agent with sig, as Stop does, and fails the test (with
// the agent's log) when the agent ignored sig. Kill(syscall.SIGKILL) is
// the way to kill it on purpose.
func (a *Agent) Kill(sig syscall.Signal) {
	if err := a.Stop(sig); err != nil {
		a.t.Errorf("%v; agent log:\n%s", err, a.Logs())
	}
}

// ExitCode is the agent's exit code once Done is closed: -1 when a signal
// ended it, or while it runs.
func (a *Agent) ExitCode() int {
	select {
	case <-a.done:
		return a.Cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// WaitServing waits up to timeout until the agent's programs serve what
// its first sync wrote: "maps synced", and, when the agent made new maps
// (its programs attach only after that sync), also the attach that
// follows it. Waiting for "maps synced" alone races the attach on new
// maps: a connect in between is not balanced at all.
func (a *Agent) WaitServing(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	a.WaitLog(t, "maps synced", timeout)
	if strings.Contains(a.Logs(), "the programs attach after the first sync") {
		a.WaitLog(t, "programs attached after the first sync filled the maps", time.Until(deadline))
	}
}

// WaitLog waits up to timeout for the agent to print substr.
func (a *Agent) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(a.Logs(), substr) {
		select {
		case <-a.done:
			t.Fatalf("agent exited before logging %q:\n%s", substr, a.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not log %q within %s:\n%s", substr, timeout, a.Logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// StartPod adds addr to the namespace's loopback (if it is not there yet:
// one pod may serve several ports) and starts TCP and UDP name servers
// answering name on addr:port.
func StartPod(t testing.TB, ns *sandbox.Netns, name, addr string, port uint16) {
	t.Helper()
	a := netip.MustParseAddr(addr)
	if err := ns.AddAddr(netip.PrefixFrom(a, 32)); err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	sandbox.StartUDPNameServer(t, ns, netip.AddrPortFrom(a, port), name)
	sandbox.StartTCPNameServer(t, ns, netip.AddrPortFrom(a, port), name)
}

// Ask connects to addr from inside ns and returns the name the backend
// answers with.
func Ask(ns *sandbox.Netns, network, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("who")); err != nil {
			return "", err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return "", fmt.Errorf("read from %s: %w", c.RemoteAddr(), err)
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", c.RemoteAddr(), err)
	}
	return strings.TrimSpace(line), nil
}

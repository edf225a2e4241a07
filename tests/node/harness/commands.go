package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"golang.org/x/sys/unix"
)

// HolderPID is the host PID of the node's PID 1, whose namespaces
// Command enters.
func (n *Node) HolderPID() int { return n.holder.inner }

// Command returns a command that runs name inside the node's mount, UTS,
// IPC, network and PID namespaces (nsenter by the holder's PID), with the
// node's PATH. Paths under /run, /var/lib and /var/log are the node's
// own there; the rest of the file system is the host's. Cancelling ctx
// kills the program inside as well as nsenter.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{
		"--target", strconv.Itoa(n.holder.inner),
		"--mount", "--uts", "--ipc", "--net", "--pid", "--", name,
	}, args...)...)
	cmd.Env = n.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		if c := onlyChild(cmd.Process.Pid); c > 0 {
			unix.Kill(c, unix.SIGKILL)
		}
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Output runs a command inside the node (see Command) and returns its
// combined output.
func (n *Node) Output(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// Run runs a command inside the node for at most 2 minutes and returns
// its combined output; it fails the test if the command fails.
func (n *Node) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := n.Output(ctx, name, args...)
	if err != nil {
		t.Fatalf("in node %s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Kubectl runs kubectl inside the node as the cluster's admin.
func (n *Node) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return n.Run(t, n.Binaries.Kubectl, append([]string{"--kubeconfig=" + n.Kubeconfig}, args...)...)
}

// ImportImage imports an image archive into the node's containerd, in
// the k8s.io namespace that kubelet's images live in.
func (n *Node) ImportImage(t testing.TB, archive string) {
	t.Helper()
	abs, err := filepath.Abs(archive)
	if err != nil {
		t.Fatal(err)
	}
	n.Run(t, n.Binaries.Ctr, "--address", containerdSocket, "--namespace", "k8s.io", "images", "import", abs)
}

// ImportBinaryImage builds the one-file image of spec ([BuildImage]),
// tags it tag (e.g. "localhost/socklb-e2e/web:test") and imports it, so
// pods can run it with imagePullPolicy Never.
func (n *Node) ImportBinaryImage(t testing.TB, spec ImageSpec, tag string) {
	t.Helper()
	img, err := BuildImage(spec)
	if err != nil {
		t.Fatalf("image %s: %v", tag, err)
	}
	name := strings.Map(func(r rune) rune {
		if r == '/' || r == ':' {
			return '_'
		}
		return r
	}, tag)
	archive := filepath.Join(n.Dir, "image-"+name+".tar")
	if err := WriteImage(archive, img, tag); err != nil {
		t.Fatalf("image %s: %v", tag, err)
	}
	n.ImportImage(t, archive)
}

func (n *Node) env() []string {
	dirs := []string{filepath.Dir(n.Binaries.Containerd), filepath.Dir(n.Binaries.Shim), filepath.Dir(n.Binaries.Runc),
		"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
	return []string{"PATH=" + strings.Join(dirs, ":"), "HOME=" + n.Dir, "TMPDIR=" + filepath.Join(n.Dir, "tmp")}
}

func (n *Node) openLog(name string) (*os.File, error) {
	path := filepath.Join(n.Dir, name+".log")
	n.logs = append(n.logs, path)
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// startComponent runs a program of the node inside its namespaces (see
// Command), logging to Dir/NAME.log; it gets SIGTERM when the test ends.
func (n *Node) startComponent(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	f, err := n.openLog(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := n.Command(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	p, err := startProc(name, cmd, nil, bin, startTimeout)
	if err != nil {
		t.Fatal(err)
	}
	n.procs = append(n.procs, p)
	t.Cleanup(func() {
		if err := p.stop(unix.SIGTERM, stopGrace); err != nil {
			t.Errorf("node teardown: %v", err)
		}
	})
	return p
}

// startScheduler runs kube-scheduler beside the control plane (in
// Cluster.NS, the host's mount and PID namespaces).
func (n *Node) startScheduler(t testing.TB) {
	t.Helper()
	f, err := n.openLog("kube-scheduler")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(n.Binaries.Scheduler,
		"--kubeconfig="+n.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--cert-dir="+filepath.Join(n.Dir, "scheduler-certs"),
		"--profiling=false",
		"--v=1",
	)
	cmd.Dir = n.Dir
	cmd.Env = n.env()
	cmd.Stdout, cmd.Stderr = f, f
	sandbox.StartProcess(t, cmd, n.NS, nil)
}

package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/socklb/socklb/tests/e2e/kubebuild"
)

// Binaries are the programs a node runs. [Start] fills in each empty field
// from the environment, then from the usual places:
//
//   - Kubelet, Scheduler, Kubectl: $SOCKLB_NODE_KUBELET,
//     $SOCKLB_NODE_KUBE_SCHEDULER, $SOCKLB_NODE_KUBECTL, else the file of
//     that name in $SOCKLB_NODE_BIN, else they are built once (see
//     [BuildKubeNodeBinaries]) from the kubebin module's Kubernetes
//     release.
//   - Containerd: $SOCKLB_NODE_CONTAINERD, else containerd on PATH
//     (Debian's containerd package). Its directory must also hold
//     containerd-shim-runc-v2 and ctr.
//   - Runc: $SOCKLB_NODE_RUNC, else runc on PATH.
//   - CNIDir: $SOCKLB_NODE_CNI_DIR, else /usr/lib/cni (Debian's
//     containernetworking-plugins); it must hold bridge, host-local and
//     loopback.
//   - Pause: $SOCKLB_NODE_PAUSE, else Start compiles the kubernetes
//     module's build/pause/linux/pause.c with gcc -static into the node's
//     directory. It is the sandbox image's program and the node's PID 1.
type Binaries struct {
	Kubelet    string
	Scheduler  string
	Kubectl    string
	Containerd string
	Runc       string
	CNIDir     string
	Pause      string
}

// Ctr is containerd's client, beside containerd.
func (b Binaries) Ctr() string { return filepath.Join(filepath.Dir(b.Containerd), "ctr") }

// adhocBuildTimeout bounds building kubelet, kube-scheduler and kubectl.
const adhocBuildTimeout = 30 * time.Minute

// resolve fills in the empty fields and checks that every program exists.
func (b Binaries) resolve(log io.Writer) (Binaries, error) {
	env := func(field *string, names ...string) {
		for _, n := range names {
			if *field == "" {
				*field = os.Getenv(n)
			}
		}
	}
	env(&b.Kubelet, "SOCKLB_NODE_KUBELET")
	env(&b.Scheduler, "SOCKLB_NODE_KUBE_SCHEDULER")
	env(&b.Kubectl, "SOCKLB_NODE_KUBECTL")
	env(&b.Containerd, "SOCKLB_NODE_CONTAINERD")
	env(&b.Runc, "SOCKLB_NODE_RUNC")
	env(&b.CNIDir, "SOCKLB_NODE_CNI_DIR")
	env(&b.Pause, "SOCKLB_NODE_PAUSE")
	if dir := os.Getenv("SOCKLB_NODE_BIN"); dir != "" {
		for _, f := range []struct {
			field *string
			name  string
		}{{&b.Kubelet, "kubelet"}, {&b.Scheduler, "kube-scheduler"}, {&b.Kubectl, "kubectl"}} {
			if *f.field == "" {
				*f.field = filepath.Join(dir, f.name)
			}
		}
	}
	if b.Kubelet == "" || b.Scheduler == "" || b.Kubectl == "" {
		dir, err := BuildKubeNodeBinaries(log)
		if err != nil {
			return b, err
		}
		for _, f := range []struct {
			field *string
			name  string
		}{{&b.Kubelet, "kubelet"}, {&b.Scheduler, "kube-scheduler"}, {&b.Kubectl, "kubectl"}} {
			if *f.field == "" {
				*f.field = filepath.Join(dir, f.name)
			}
		}
	}
	const debian = "(apt-get install containerd runc containernetworking-plugins)"
	if b.Containerd == "" {
		p, err := exec.LookPath("containerd")
		if err != nil {
			return b, fmt.Errorf("no containerd on PATH and $SOCKLB_NODE_CONTAINERD is empty %s", debian)
		}
		b.Containerd = p
	}
	if b.Runc == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			return b, fmt.Errorf("no runc on PATH and $SOCKLB_NODE_RUNC is empty %s", debian)
		}
		b.Runc = p
	}
	if b.CNIDir == "" {
		b.CNIDir = "/usr/lib/cni"
	}
	var errs []error
	for _, p := range []string{
		b.Kubelet, b.Scheduler, b.Kubectl,
		b.Containerd, filepath.Join(filepath.Dir(b.Containerd), "containerd-shim-runc-v2"), b.Ctr(),
		b.Runc,
		filepath.Join(b.CNIDir, "bridge"), filepath.Join(b.CNIDir, "host-local"), filepath.Join(b.CNIDir, "loopback"),
	} {
		if err := checkExecutable(p); err != nil {
			errs = append(errs, err)
		}
	}
	if b.Pause != "" {
		if err := checkExecutable(b.Pause); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return b, fmt.Errorf("node binaries %s: %w", debian, errors.Join(errs...))
	}
	for _, p := range []*string{&b.Kubelet, &b.Scheduler, &b.Kubectl, &b.Containerd, &b.Runc, &b.CNIDir, &b.Pause} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return b, err
		}
		*p = abs
	}
	return b, nil
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

var adhoc struct {
	sync.Mutex
	dir string
}

// nodePackages are the node's Kubernetes programs in the kubernetes module.
var nodePackages = []string{
	"k8s.io/kubernetes/cmd/kubelet",
	"k8s.io/kubernetes/cmd/kube-scheduler",
	"k8s.io/kubernetes/cmd/kubectl",
}

// BuildKubeNodeBinaries builds kubelet, kube-scheduler and kubectl of the
// Kubernetes release that tests/e2e/kubebin pins, with kubebuild's flags,
// into a directory of the e2e cache (node-adhoc-<version>-<key>, keyed by
// the kubebin module's go.mod and go.sum, the flags and the Go version)
// and returns it; a later call reuses it. kubebin's go.sum does not list
// the modules those programs need, so the build runs in a throwaway copy
// of the module whose requirements `go mod tidy` completes.
//
// This is a stopgap until kubebuild caches the node's programs itself.
// Build progress goes to log; the build takes about a minute with a warm
// Go build cache.
func BuildKubeNodeBinaries(log io.Writer) (string, error) {
	adhoc.Lock()
	defer adhoc.Unlock()
	if adhoc.dir != "" {
		return adhoc.dir, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), adhocBuildTimeout)
	defer cancel()
	modDir, err := kubebuild.ModuleDir(ctx)
	if err != nil {
		return "", err
	}
	cache, err := kubebuild.CacheDir()
	if err != nil {
		return "", err
	}
	gomod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return "", err
	}
	gosum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, part := range [][]byte{gomod, gosum, []byte(kubebuild.LDFlags()), []byte(runtime.Version()), []byte(strings.Join(nodePackages, " "))} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	dir := filepath.Join(cache, "node-adhoc-"+kubebuild.KubernetesVersion+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	if complete(dir) {
		adhoc.dir = dir
		return dir, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, "node-adhoc-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	mod := filepath.Join(tmp, "mod")
	if err := os.Mkdir(mod, 0o755); err != nil {
		return "", err
	}
	newMod, err := adhocGoMod(gomod)
	if err != nil {
		return "", err
	}
	for name, data := range map[string][]byte{
		"go.mod": newMod,
		"go.sum": gosum,
		"doc.go": []byte("// Package nodeadhoc builds the node's Kubernetes programs.\npackage nodeadhoc\n"),
	} {
		if err := os.WriteFile(filepath.Join(mod, name), data, 0o644); err != nil {
			return "", err
		}
	}
	out := filepath.Join(tmp, "bin")
	start := time.Now()
	fmt.Fprintf(log, "building %s (once; cached in %s)\n", strings.Join(nodePackages, " "), dir)
	if err := goCmd(ctx, mod, log, "mod", "tidy"); err != nil {
		return "", err
	}
	args := append([]string{"build", "-trimpath", "-ldflags", kubebuild.LDFlags(), "-o", out + "/"}, nodePackages...)
	if err := goCmd(ctx, mod, log, args...); err != nil {
		return "", err
	}
	if err := os.Rename(out, dir); err != nil {
		if !complete(dir) { // another process renamed its build there first
			return "", err
		}
	}
	fmt.Fprintf(log, "built the node's Kubernetes programs in %v\n", time.Since(start).Round(time.Second))
	adhoc.dir = dir
	return dir, nil
}

func complete(dir string) bool {
	for _, name := range []string{"kubelet", "kube-scheduler", "kubectl"} {
		if checkExecutable(filepath.Join(dir, name)) != nil {
			return false
		}
	}
	return true
}

// adhocGoMod renames the kubebin module and adds the node's programs to
// its tool block.
func adhocGoMod(gomod []byte) ([]byte, error) {
	lines := strings.Split(string(gomod), "\n")
	renamed, tools := false, false
	var out []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "module "):
			l, renamed = "module socklb.invalid/nodeadhoc", true
		case strings.TrimSpace(l) == "tool (":
			out = append(out, l)
			for _, p := range nodePackages {
				out = append(out, "\t"+p)
			}
			tools = true
			continue
		}
		out = append(out, l)
	}
	if !renamed || !tools {
		return nil, errors.New("kubebin go.mod: no module line or tool block")
	}
	return []byte(strings.Join(out, "\n")), nil
}

func goCmd(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, buf.Bytes())
	}
	if buf.Len() > 0 {
		log.Write(buf.Bytes())
	}
	return nil
}

// pauseSource finds build/pause/linux/pause.c in the module cache's copy
// of the kubernetes module that kubebin pins.
func pauseSource(ctx context.Context) (string, error) {
	modDir, err := kubebuild.ModuleDir(ctx)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "k8s.io/kubernetes")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes: %w", err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes: %w", err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes: %q", m.Error)
	}
	return filepath.Join(m.Dir, "build", "pause", "linux", "pause.c"), nil
}

// buildPause compiles kubernetes' pause.c statically, with the Makefile's
// flags, into dir/pause.
func buildPause(ctx context.Context, dir string) (string, error) {
	src, err := pauseSource(ctx)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "pause")
	cmd := exec.CommandContext(ctx, "gcc", "-Os", "-Wall", "-Werror", "-static",
		"-DVERSION=v"+PauseVersion+"-socklb", "-o", out, src)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc -static %s (needs gcc and libc6-dev): %w\n%s", src, err, b)
	}
	return out, nil
}

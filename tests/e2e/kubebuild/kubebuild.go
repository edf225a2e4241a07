// Package kubebuild builds, once, the Kubernetes binaries the e2e tests and
// benchmarks run (kube-apiserver, kube-controller-manager, kube-proxy,
// etcd) from the kubebin module
// and caches them under ${SOCKLB_E2E_CACHE:-$HOME/.cache/socklb-e2e}.
//
// The build always uses the same flags, so a later rebuild (another Go
// version, a changed go.sum) reuses the Go build cache. A cold build takes
// several minutes on two cores: give [Ensure] a context of its own, not a
// test's deadline, and pre-build with `go run ./tests/e2e/cmd/e2e-bin`.
package kubebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// KubernetesVersion is the release that tests/e2e/kubebin pins.
const KubernetesVersion = "v1.37.2"

// buildDate is fixed so that the link is the same every time.
const buildDate = "2026-01-01T00:00:00Z"

// Binaries are the absolute paths of the cached binaries.
type Binaries struct {
	Dir               string
	APIServer         string
	ControllerManager string
	KubeProxy         string // the benchmarks' baseline
	Etcd              string
}

// packages maps each binary's file name to its package in the kubebin module.
var packages = []struct{ name, pkg, built string }{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"},
	{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"},
	{"kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"},
	{"etcd", "go.etcd.io/etcd/server/v3", "server"}, // go build names it after the path element before /v3
}

// LDFlags are the linker flags of every build: component-base's (and
// client-go's) version variables, as Kubernetes' release build sets them,
// so that the API server reports and emulates v1.37.
func LDFlags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", pkg+".gitVersion="+KubernetesVersion,
			"-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean",
			"-X", pkg+".buildDate="+buildDate,
		)
	}
	return strings.Join(flags, " ")
}

// CacheDir is $SOCKLB_E2E_CACHE, or $HOME/.cache/socklb-e2e.
func CacheDir() (string, error) {
	if d := os.Getenv("SOCKLB_E2E_CACHE"); d != "" {
		return filepath.Abs(d)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cache directory: set SOCKLB_E2E_CACHE: %w", err)
	}
	return filepath.Join(home, ".cache", "socklb-e2e"), nil
}

// ModuleDir finds tests/e2e/kubebin from the main module that contains the
// working directory (tests run in their package directory, `go run` in
// the caller's), using `go env GOMOD`.
func ModuleDir(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMOD")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the socklb module: run from the repository")
	}
	dir := filepath.Join(filepath.Dir(gomod), "tests", "e2e", "kubebin")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("kubebin module: %w", err)
	}
	return dir, nil
}

// Ensure returns the cached binaries, building them first when they are
// missing or were built from another go.mod/go.sum, flags or Go version.
// Concurrent callers (other test processes) wait on a lock file while one
// of them builds; the wait and the build are bounded by ctx only. Build
// progress goes to log (may be nil).
func Ensure(ctx context.Context, log io.Writer) (*Binaries, error) {
	if log == nil {
		log = io.Discard
	}
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	modDir, err := ModuleDir(ctx)
	if err != nil {
		return nil, err
	}
	stamp, err := buildStamp(ctx, modDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "k8s-"+KubernetesVersion)
	bins := binariesIn(dir)
	if upToDate(dir, stamp) {
		return bins, nil
	}

	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lock(ctx, filepath.Join(cache, "k8s-"+KubernetesVersion+".lock"), log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if upToDate(dir, stamp) { // another process built them while we waited
		return bins, nil
	}
	// Builds that died without cleaning up (the lock is ours now, so no
	// other build is running).
	stale, _ := filepath.Glob(filepath.Join(cache, "k8s-*.build-*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}

	tmp, err := os.MkdirTemp(cache, "k8s-"+KubernetesVersion+".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-trimpath", "-ldflags", LDFlags(), "-o", tmp + "/"}
	for _, p := range packages {
		args = append(args, p.pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = buildEnv()
	// Its own process group, so that cancelling stops the compilers too;
	// and it dies with us (a test binary killed by -timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, log)
	cmd.Stderr = cmd.Stdout
	fmt.Fprintf(log, "kubebuild: building Kubernetes %s binaries into %s (cold: several minutes)\n", KubernetesVersion, dir)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return nil, fmt.Errorf("build Kubernetes binaries (in %s): %w\n%s", modDir, err, out.Bytes())
	}
	for _, p := range packages {
		if p.built != p.name {
			if err := os.Rename(filepath.Join(tmp, p.built), filepath.Join(tmp, p.name)); err != nil {
				return nil, err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "stamp"), []byte(stamp+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "kubebuild: built in %v\n", time.Since(start).Round(time.Second))
	return bins, nil
}

func binariesIn(dir string) *Binaries {
	return &Binaries{
		Dir:               dir,
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		KubeProxy:         filepath.Join(dir, "kube-proxy"),
		Etcd:              filepath.Join(dir, "etcd"),
	}
}

func buildEnv() []string {
	return append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
}

// buildStamp identifies a build: kubebin's go.mod and go.sum, the flags
// and the Go version. A different stamp means rebuild.
func buildStamp(ctx context.Context, modDir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	cmd := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOARCH")
	cmd.Dir = modDir
	cmd.Env = buildEnv()
	goVersion, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	fmt.Fprintf(h, "ldflags %s\ngo %s", LDFlags(), goVersion)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func upToDate(dir, stamp string) bool {
	got, err := os.ReadFile(filepath.Join(dir, "stamp"))
	if err != nil || strings.TrimSpace(string(got)) != stamp {
		return false
	}
	for _, p := range packages {
		if fi, err := os.Stat(filepath.Join(dir, p.name)); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// lock takes an exclusive flock on path, polling so that ctx bounds the
// wait. The lock dies with the process, so a killed build never blocks the
// next one.
func lock(ctx context.Context, path string, log io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	waiting := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !waiting {
			fmt.Fprintf(log, "kubebuild: waiting for another process building into %s\n", filepath.Dir(path))
			waiting = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

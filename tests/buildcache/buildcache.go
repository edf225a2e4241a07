// Package buildcache owns the cache of the binaries that the e2e tests, the
// benchmarks and the test node build from source:
// ${SOCKLB_E2E_CACHE:-$HOME/.cache/socklb-e2e}/<set>/, one directory per
// set of binaries, each with a stamp naming the inputs that built it.
//
// [Ensure] rebuilds a set only when its stamp differs or a file is missing,
// under a lock file (concurrent test processes wait for one build), into a
// temporary directory that then replaces the old one whole, so a reader
// never sees half a set. [GoBuild] and [GoStamp] are the pieces the Go
// builds share: always the same flags, so that a rebuild (another Go
// version, a changed go.sum) reuses the Go build cache. What each set holds
// is its owner's business (tests/e2e/kubebuild, tests/node/nodebuild).
package buildcache

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
	"strings"
	"syscall"
	"time"
)

// Set is one directory of the cache.
type Set struct {
	// Name is the directory under [CacheDir]: "containerd-v2.3.7".
	Name string
	// Files are the executables the set holds; a missing one means rebuild.
	Files []string
	// Data are the other regular files it holds (a root filesystem
	// archive), likewise.
	Data []string
	// Stamp identifies the inputs (sources, flags, compiler); a different
	// stamp means rebuild.
	Stamp string
	// Build writes Files into dir, an empty directory; the wait and the
	// build are bounded by ctx only.
	Build func(ctx context.Context, dir string, log io.Writer) error
	// Describe names the set in the log: "Kubernetes v1.37.2 binaries".
	Describe string
	// Cold says how long a build from a cold Go build cache takes, for
	// the log: "several minutes".
	Cold string
}

// Result is a set in the cache after [Ensure].
type Result struct {
	Dir   string        // absolute
	Built bool          // false when the cached set was up to date
	Took  time.Duration // the whole call, the wait for a lock included
}

// Path is the absolute path of one of the set's files.
func (r *Result) Path(file string) string { return filepath.Join(r.Dir, file) }

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

// ModuleDir finds the nested module rel ("tests/e2e/kubebin") from the
// socklb module that contains the working directory (tests run in their
// package directory, `go run` in the caller's), using `go env GOMOD`.
func ModuleDir(ctx context.Context, rel string) (string, error) {
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
	dir := filepath.Join(filepath.Dir(gomod), filepath.FromSlash(rel))
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("module %s: %w", rel, err)
	}
	return dir, nil
}

// Ensure returns the set's directory, building it first when a file is
// missing or the stamp differs. Concurrent callers (other test processes)
// wait on a lock file, <name>.lock, while one of them builds. Progress goes
// to log (may be nil).
func Ensure(ctx context.Context, set Set, log io.Writer) (*Result, error) {
	start := time.Now()
	if log == nil {
		log = io.Discard
	}
	if set.Name == "" || strings.ContainsRune(set.Name, filepath.Separator) || set.Stamp == "" || len(set.Files)+len(set.Data) == 0 {
		return nil, fmt.Errorf("buildcache: set %q needs a plain name, a stamp and files", set.Name)
	}
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, set.Name)
	res := &Result{Dir: dir}
	if upToDate(dir, set) {
		res.Took = time.Since(start)
		return res, nil
	}

	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lock(ctx, filepath.Join(cache, set.Name+".lock"), log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if upToDate(dir, set) { // another process built it while we waited
		res.Took = time.Since(start)
		return res, nil
	}
	// Builds of this set that died without cleaning up (the lock is ours
	// now, so no other build of it is running).
	stale, _ := filepath.Glob(filepath.Join(cache, set.Name+".build-*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}

	tmp, err := os.MkdirTemp(cache, set.Name+".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	what := set.Describe
	if what == "" {
		what = set.Name
	}
	cold := ""
	if set.Cold != "" {
		cold = " (cold: " + set.Cold + ")"
	}
	fmt.Fprintf(log, "buildcache: building %s into %s%s\n", what, dir, cold)
	buildStart := time.Now()
	if err := set.Build(ctx, tmp, log); err != nil {
		if ctx.Err() != nil && !errors.Is(err, context.Cause(ctx)) {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return nil, fmt.Errorf("build %s: %w", what, err)
	}
	for _, f := range set.Files {
		if !executable(filepath.Join(tmp, f)) {
			return nil, fmt.Errorf("build %s: it wrote no executable %s", what, f)
		}
	}
	for _, f := range set.Data {
		if !regular(filepath.Join(tmp, f)) {
			return nil, fmt.Errorf("build %s: it wrote no file %s", what, f)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "stamp"), []byte(set.Stamp+"\n"), 0o644); err != nil {
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
	fmt.Fprintf(log, "buildcache: built %s in %v\n", what, time.Since(buildStart).Round(time.Second))
	res.Built = true
	res.Took = time.Since(start)
	return res, nil
}

func upToDate(dir string, set Set) bool {
	got, err := os.ReadFile(filepath.Join(dir, "stamp"))
	if err != nil || strings.TrimSpace(string(got)) != set.Stamp {
		return false
	}
	for _, f := range set.Files {
		if !executable(filepath.Join(dir, f)) {
			return false
		}
	}
	for _, f := range set.Data {
		if !regular(filepath.Join(dir, f)) {
			return false
		}
	}
	return true
}

func regular(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Package is one main package of a [GoBuild] and the file it becomes.
type Package struct {
	Name string // the file in the set: "etcd"
	Path string // the import path: "go.etcd.io/etcd/server/v3"
}

// built is the file name `go build -o dir/` gives a package: its last path
// element, or the one before a major-version suffix (".../server/v3" →
// "server").
func (p Package) built() string {
	elems := strings.Split(p.Path, "/")
	last := elems[len(elems)-1]
	if len(elems) > 1 && len(last) > 1 && last[0] == 'v' && strings.Trim(last[1:], "0123456789") == "" {
		last = elems[len(elems)-2]
	}
	return last
}

// GoBuild builds pkgs of the module in modDir into dir, with CGO off,
// -trimpath, the module's go.sum as it is (-mod=readonly), ldflags and tags,
// then names each binary after its Package.Name. The go command runs in
// its own process group, killed with ctx and with the calling process.
func GoBuild(ctx context.Context, modDir, dir, ldflags string, tags []string, pkgs []Package, log io.Writer) error {
	args := []string{"build", "-trimpath", "-ldflags", ldflags}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "-o", dir+string(filepath.Separator))
	for _, p := range pkgs {
		args = append(args, p.Path)
	}
	cmd := Command(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = GoEnv()
	if err := Run(cmd, log); err != nil {
		return fmt.Errorf("in %s: %w", modDir, err)
	}
	for _, p := range pkgs {
		if b := p.built(); b != p.Name {
			if err := os.Rename(filepath.Join(dir, b), filepath.Join(dir, p.Name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Packages lists pkgs as "name=path ...", for a stamp.
func Packages(pkgs ...Package) string {
	var b strings.Builder
	b.WriteString("packages")
	for _, p := range pkgs {
		fmt.Fprintf(&b, " %s=%s", p.Name, p.Path)
	}
	return b.String()
}

// ModuleSource downloads, if need be, the module that modDir requires
// at path and returns its directory in the module cache and its version.
func ModuleSource(ctx context.Context, modDir, path string) (dir, version string, err error) {
	cmd := Command(ctx, "go", "mod", "download", "-json", path)
	cmd.Dir = modDir
	cmd.Env = GoEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Version, Error string }
	if jerr := json.Unmarshal(out, &info); jerr != nil && err == nil {
		err = jerr
	}
	if err != nil || info.Error != "" || info.Dir == "" {
		return "", "", fmt.Errorf("go mod download %s in %s: %v %s %s", path, modDir, err, info.Error, stderr.Bytes())
	}
	return info.Dir, info.Version, nil
}

// GoEnv is the environment of every Go build and of the go commands that
// stamp it: CGO off, no workspace, go.sum as committed, no VCS stamping.
func GoEnv() []string {
	return append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
}

// GoStamp identifies a Go build: the go.mod and go.sum of modDir, the Go
// version and architecture, and extra (flags, package lists), in order.
func GoStamp(ctx context.Context, modDir string, extra ...string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	for _, e := range extra {
		fmt.Fprintf(h, "%s\n", e)
	}
	cmd := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOARCH")
	cmd.Dir = modDir
	cmd.Env = GoEnv()
	goVersion, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	fmt.Fprintf(h, "go %s", goVersion)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Stamp hashes parts, in order, into a stamp for builds that are not Go's.
func Stamp(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d\n", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Command is exec.CommandContext with the process in its own process
// group, so that cancelling ctx stops its children too (the compilers of a
// go build), and killed when the calling process dies (a test binary
// killed by -timeout).
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Run runs cmd with its output going to log, and returns an error that
// includes that output.
func Run(cmd *exec.Cmd, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, log)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out.Bytes())
	}
	return nil
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
			fmt.Fprintf(log, "buildcache: waiting for another process building %s\n", strings.TrimSuffix(path, ".lock"))
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

package nodebuild

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"

	"github.com/socklb/socklb/tests/buildcache"
	"github.com/socklb/socklb/tests/e2e/kubebuild"
)

// Pause is the cached pause binary, the sandbox container's process.
type Pause struct {
	Dir   string
	Pause string
	// Version is the pause image's tag that Kubernetes' build/pause/Makefile
	// names ("3.10.2"): tag the image made from this binary with it.
	Version string
	Source  string // pause.c in the module cache
	Built   bool   // this call built it
}

// pauseCFlags are the compiler flags: static (the image holds nothing
// else), warnings as errors as Kubernetes' Makefile has them, stripped.
var pauseCFlags = []string{"-static", "-O2", "-Wall", "-Werror", "-s"}

// EnsurePause returns the cached pause binary, compiling Kubernetes'
// build/pause/linux/pause.c (of the k8s.io/kubernetes version kubebin
// pins) with $CC (gcc when unset) first when it is missing or stale.
func EnsurePause(ctx context.Context, log io.Writer) (*Pause, error) {
	src, err := kubernetesSource(ctx)
	if err != nil {
		return nil, err
	}
	pauseC := filepath.Join(src, "build", "pause", "linux", "pause.c")
	code, err := os.ReadFile(pauseC)
	if err != nil {
		return nil, err
	}
	makefile, err := os.ReadFile(filepath.Join(src, "build", "pause", "Makefile"))
	if err != nil {
		return nil, err
	}
	tag := regexp.MustCompile(`(?m)^TAG \?= ([0-9][0-9A-Za-z.-]*)\s*$`).FindSubmatch(makefile)
	if tag == nil {
		return nil, fmt.Errorf("%s/build/pause/Makefile: no `TAG ?= x.y.z` line", src)
	}
	version := string(tag[1])

	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	ccPath, err := exec.LookPath(cc)
	if err != nil {
		return nil, fmt.Errorf("no C compiler %q to build pause: install Debian's gcc and libc6-dev (make deps): %w", cc, err)
	}
	ccVersion, err := exec.CommandContext(ctx, ccPath, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", ccPath, err)
	}
	// pause prints this with -v; Kubernetes' Makefile puts its git
	// revision after the tag.
	args := append(append([]string{}, pauseCFlags...),
		fmt.Sprintf("-DVERSION=v%s-k8s-%s", version, kubebuild.KubernetesVersion))
	argsJSON, _ := json.Marshal(args)
	res, err := buildcache.Ensure(ctx, buildcache.Set{
		Name:     "pause-" + version,
		Files:    []string{"pause"},
		Stamp:    buildcache.Stamp(code, []byte(ccPath), ccVersion, argsJSON),
		Describe: "pause " + version + " (" + pauseC + ")",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			out := filepath.Join(dir, "pause")
			cmd := buildcache.Command(ctx, ccPath, append(args, "-o", out, pauseC)...)
			if err := buildcache.Run(cmd, log); err != nil {
				return fmt.Errorf("static libc missing? install libc6-dev (make deps): %w", err)
			}
			return checkStatic(out)
		},
	}, log)
	if err != nil {
		return nil, err
	}
	return &Pause{Dir: res.Dir, Pause: res.Path("pause"), Version: version, Source: pauseC, Built: res.Built}, nil
}

// kubernetesSource is the module cache directory of the k8s.io/kubernetes
// version kubebin requires, downloaded first if it is missing.
func kubernetesSource(ctx context.Context) (string, error) {
	modDir, err := kubebuild.ModuleDir(ctx)
	if err != nil {
		return "", err
	}
	dir, version, err := buildcache.ModuleSource(ctx, modDir, "k8s.io/kubernetes")
	if err != nil {
		return "", err
	}
	if version != kubebuild.KubernetesVersion {
		return "", fmt.Errorf("kubebin requires k8s.io/kubernetes %s, kubebuild says %s", version, kubebuild.KubernetesVersion)
	}
	return dir, nil
}

// checkStatic fails unless path is an ELF executable without an
// interpreter (a dynamic one would not run in an image holding only it).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// Package kubebuild builds, once, the Kubernetes binaries of the kubebin
// module and caches them (package buildcache) under
// ${SOCKLB_E2E_CACHE:-$HOME/.cache/socklb-e2e}, as two sets built from the
// same module graph with the same flags:
//
//   - k8s-v1.37.2/ ([Ensure]): kube-apiserver, kube-controller-manager,
//     kube-proxy and etcd, which the e2e tests and the benchmarks run;
//   - k8s-v1.37.2-node/ ([EnsureNode]): kubelet, kube-scheduler and
//     kubectl, which only the test node (tests/node) adds.
//
// Two sets, so that the e2e tests and benchmarks never wait for (or fail
// on) a kubelet build they do not use, while the node reuses their build
// cache. The build always uses the same flags, so a later rebuild (another
// Go version, a changed go.sum) reuses the Go build cache. A cold build
// takes several minutes on two cores: give [Ensure] a context of its own,
// not a test's deadline, and pre-build with `go run ./tests/e2e/cmd/e2e-bin`
// (or `go run ./tests/node/cmd/node-bin` for the node's).
package kubebuild

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/socklb/socklb/tests/buildcache"
)

// KubernetesVersion is the release that tests/e2e/kubebin pins.
const KubernetesVersion = "v1.37.2"

// ModulePath is where the kubebin module lives in the repository.
const ModulePath = "tests/e2e/kubebin"

// buildDate is fixed so that the link is the same every time.
const buildDate = "2026-01-01T00:00:00Z"

// Binaries are the absolute paths of the cached control-plane binaries.
type Binaries struct {
	Dir               string
	APIServer         string
	ControllerManager string
	KubeProxy         string // the benchmarks' baseline
	Etcd              string
	Built             bool // this call built them (they were missing or stale)
}

// NodeBinaries are the absolute paths of the cached binaries that a node
// adds to the control plane.
type NodeBinaries struct {
	Dir       string
	Kubelet   string
	Scheduler string
	Kubectl   string
	Built     bool // this call built them (they were missing or stale)
}

// controlPlane and node are the two sets' packages in the kubebin module.
var (
	controlPlane = []buildcache.Package{
		{Name: "kube-apiserver", Path: "k8s.io/kubernetes/cmd/kube-apiserver"},
		{Name: "kube-controller-manager", Path: "k8s.io/kubernetes/cmd/kube-controller-manager"},
		{Name: "kube-proxy", Path: "k8s.io/kubernetes/cmd/kube-proxy"},
		{Name: "etcd", Path: "go.etcd.io/etcd/server/v3"},
	}
	node = []buildcache.Package{
		{Name: "kubelet", Path: "k8s.io/kubernetes/cmd/kubelet"},
		{Name: "kube-scheduler", Path: "k8s.io/kubernetes/cmd/kube-scheduler"},
		{Name: "kubectl", Path: "k8s.io/kubernetes/cmd/kubectl"},
	}
)

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
func CacheDir() (string, error) { return buildcache.CacheDir() }

// ModuleDir finds tests/e2e/kubebin from the main module that contains the
// working directory (tests run in their package directory, `go run` in
// the caller's), using `go env GOMOD`.
func ModuleDir(ctx context.Context) (string, error) {
	return buildcache.ModuleDir(ctx, ModulePath)
}

// Ensure returns the cached control-plane binaries, building them first
// when they are missing or were built from another go.mod/go.sum, flags or
// Go version. Concurrent callers (other test processes) wait on a lock
// file while one of them builds; the wait and the build are bounded by ctx
// only. Build progress goes to log (may be nil).
func Ensure(ctx context.Context, log io.Writer) (*Binaries, error) {
	res, err := ensure(ctx, "k8s-"+KubernetesVersion, controlPlane, log)
	if err != nil {
		return nil, err
	}
	return &Binaries{
		Dir:               res.Dir,
		APIServer:         res.Path("kube-apiserver"),
		ControllerManager: res.Path("kube-controller-manager"),
		KubeProxy:         res.Path("kube-proxy"),
		Etcd:              res.Path("etcd"),
		Built:             res.Built,
	}, nil
}

// EnsureNode is [Ensure] for kubelet, kube-scheduler and kubectl, in a
// directory of their own (k8s-v1.37.2-node) with a lock of its own.
func EnsureNode(ctx context.Context, log io.Writer) (*NodeBinaries, error) {
	res, err := ensure(ctx, "k8s-"+KubernetesVersion+"-node", node, log)
	if err != nil {
		return nil, err
	}
	return &NodeBinaries{
		Dir:       res.Dir,
		Kubelet:   res.Path("kubelet"),
		Scheduler: res.Path("kube-scheduler"),
		Kubectl:   res.Path("kubectl"),
		Built:     res.Built,
	}, nil
}

func ensure(ctx context.Context, name string, pkgs []buildcache.Package, log io.Writer) (*buildcache.Result, error) {
	modDir, err := ModuleDir(ctx)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, p := range pkgs {
		files = append(files, p.Name)
	}
	stamp, err := buildcache.GoStamp(ctx, modDir, "ldflags "+LDFlags(), buildcache.Packages(pkgs...))
	if err != nil {
		return nil, err
	}
	return buildcache.Ensure(ctx, buildcache.Set{
		Name:     name,
		Files:    files,
		Stamp:    stamp,
		Describe: fmt.Sprintf("Kubernetes %s %s", KubernetesVersion, strings.Join(files, ", ")),
		Cold:     "several minutes",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			return buildcache.GoBuild(ctx, modDir, dir, LDFlags(), nil, pkgs, log)
		},
	}, log)
}

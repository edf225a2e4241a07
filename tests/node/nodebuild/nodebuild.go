// Package nodebuild owns the binaries a test node runs, besides the agent:
// it builds the ones made from source once, caches them (package
// buildcache) under ${SOCKLB_E2E_CACHE:-$HOME/.cache/socklb-e2e}, and finds
// the ones Debian packages. [Ensure] returns every path:
//
//   - kube-apiserver, kube-controller-manager, etcd and kubelet,
//     kube-scheduler, kubectl: package kubebuild (k8s-v1.37.2/ and
//     k8s-v1.37.2-node/, from tests/e2e/kubebin);
//   - containerd, containerd-shim-runc-v2, ctr: containerd-<version>/, from
//     the tests/node/ctrbin module;
//   - coredns: coredns-<version>/, from the tests/node/dnsbin module;
//   - pause: pause-<tag>/, Kubernetes' build/pause/linux/pause.c (from the
//     k8s.io/kubernetes module kubebin pins) compiled static with the C
//     compiler;
//   - runc and the CNI plugins bridge, host-local and loopback: Debian's
//     runc and containernetworking-plugins (`make deps`), found, not built.
//
// Each set has its own directory, stamp and lock, so changing one rebuilds
// only that one. With an empty Go build cache the node's own sets take
// about eight minutes on two cores, after the control plane's eleven: pre-build
// with `go run ./tests/node/cmd/node-bin` (`make node-bin`).
package nodebuild

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/socklb/socklb/tests/buildcache"
	"github.com/socklb/socklb/tests/e2e/kubebuild"
)

// Binaries are the absolute paths of everything a test node runs.
type Binaries struct {
	ControlPlane *kubebuild.Binaries     // kube-apiserver, kube-controller-manager, etcd
	KubeNode     *kubebuild.NodeBinaries // kubelet, kube-scheduler, kubectl
	Containerd   *Containerd
	CoreDNS      *CoreDNS
	Pause        *Pause
	Runc         *Runc
	CNI          *CNI
	// Steps say what each part took, in the order [Ensure] went.
	Steps []Step
}

// Step is one part of [Ensure]: a set built or found in the cache, or a
// Debian package's files found.
type Step struct {
	Name  string // "containerd v2.3.7"
	Dir   string
	State string // "built", "cached" or "found"
	Took  time.Duration
}

// Ensure builds what is missing or stale and finds the rest. It goes on
// after a part fails, so one call reports every missing piece (errors
// joined), but it returns no Binaries then. Progress goes to log (may be
// nil); the wait and the builds are bounded by ctx only.
func Ensure(ctx context.Context, log io.Writer) (*Binaries, error) {
	if log == nil {
		log = io.Discard
	}
	b := &Binaries{}
	// Each part fills its field of b and says what it is and where.
	parts := []func() (name, dir, state string, err error){
		func() (string, string, string, error) {
			r, err := FindRunc(ctx)
			if err != nil {
				return "runc", "", "", err
			}
			b.Runc = r
			return "runc " + r.Version, r.Path, "found", nil
		},
		func() (string, string, string, error) {
			c, err := FindCNI(ctx)
			if err != nil {
				return "CNI plugins", "", "", err
			}
			b.CNI = c
			return "CNI plugins " + c.Version, c.Dir, "found", nil
		},
		func() (string, string, string, error) {
			p, err := EnsurePause(ctx, log)
			if err != nil {
				return "pause", "", "", err
			}
			b.Pause = p
			return "pause " + p.Version, p.Dir, state(p.Built), nil
		},
		func() (string, string, string, error) {
			d, err := EnsureCoreDNS(ctx, log)
			if err != nil {
				return "coredns", "", "", err
			}
			b.CoreDNS = d
			return "coredns " + d.Version, d.Dir, state(d.Built), nil
		},
		func() (string, string, string, error) {
			c, err := EnsureContainerd(ctx, log)
			if err != nil {
				return "containerd", "", "", err
			}
			b.Containerd = c
			return "containerd " + c.Version, c.Dir, state(c.Built), nil
		},
		func() (string, string, string, error) {
			name := "kube-apiserver, kube-controller-manager, etcd " + kubebuild.KubernetesVersion
			k, err := kubebuild.Ensure(ctx, log)
			if err != nil {
				return name, "", "", err
			}
			b.ControlPlane = k
			return name, k.Dir, state(k.Built), nil
		},
		func() (string, string, string, error) {
			name := "kubelet, kube-scheduler, kubectl " + kubebuild.KubernetesVersion
			k, err := kubebuild.EnsureNode(ctx, log)
			if err != nil {
				return name, "", "", err
			}
			b.KubeNode = k
			return name, k.Dir, state(k.Built), nil
		},
	}
	var errs []error
	for _, part := range parts {
		if ctx.Err() != nil {
			errs = append(errs, context.Cause(ctx))
			break
		}
		start := time.Now()
		name, dir, st, err := part()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		s := Step{Name: name, Dir: dir, State: st, Took: time.Since(start)}
		b.Steps = append(b.Steps, s)
		fmt.Fprintf(log, "nodebuild: %s %s in %v: %s\n", name, st, s.Took.Round(10*time.Millisecond), dir)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return b, nil
}

func state(built bool) string {
	if built {
		return "built"
	}
	return "cached"
}

// Paths lists every binary (and the CNI directory) with a short name, in a
// fixed order, for printing.
func (b *Binaries) Paths() [][2]string {
	return [][2]string{
		{"kube-apiserver", b.ControlPlane.APIServer},
		{"kube-controller-manager", b.ControlPlane.ControllerManager},
		{"etcd", b.ControlPlane.Etcd},
		{"kube-scheduler", b.KubeNode.Scheduler},
		{"kubelet", b.KubeNode.Kubelet},
		{"kubectl", b.KubeNode.Kubectl},
		{"containerd", b.Containerd.Containerd},
		{"containerd-shim-runc-v2", b.Containerd.Shim},
		{"ctr", b.Containerd.Ctr},
		{"coredns", b.CoreDNS.CoreDNS},
		{"pause", b.Pause.Pause},
		{"runc", b.Runc.Path},
		{"cni-bin-dir", b.CNI.Dir},
	}
}

// requiredVersion is the version at which the module in modDir requires
// path, read from its go.mod (`go mod edit -json`, no network).
func requiredVersion(ctx context.Context, modDir, path string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "edit", "-json")
	cmd.Dir = modDir
	cmd.Env = buildcache.GoEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod edit -json in %s: %w", modDir, err)
	}
	var m struct {
		Require []struct{ Path, Version string }
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("parse %s/go.mod: %w", modDir, err)
	}
	for _, r := range m.Require {
		if r.Path == path {
			return r.Version, nil
		}
	}
	return "", fmt.Errorf("%s/go.mod does not require %s", modDir, path)
}

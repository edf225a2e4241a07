package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/socklb/socklb/tests/node/nodebuild"
)

// Binaries are the programs a node runs. [Start] fills each empty field
// from its environment variable, then from package nodebuild's cache
// (which builds what is missing: `make node-bin` does it ahead of the
// tests):
//
//	Kubelet     $SOCKLB_NODE_KUBELET          kubelet v1.37.2
//	Scheduler   $SOCKLB_NODE_KUBE_SCHEDULER   kube-scheduler
//	Kubectl     $SOCKLB_NODE_KUBECTL          kubectl
//	Containerd  $SOCKLB_NODE_CONTAINERD       containerd v2.3.7
//	Shim        $SOCKLB_NODE_SHIM             containerd-shim-runc-v2
//	Ctr         $SOCKLB_NODE_CTR              ctr
//	Runc        $SOCKLB_NODE_RUNC             Debian's runc
//	CNIDir      $SOCKLB_NODE_CNI_DIR          Debian's CNI plugins (bridge, host-local, loopback)
//	Pause       $SOCKLB_NODE_PAUSE            pause.c of the kubernetes module, static
//	CoreDNS     $SOCKLB_NODE_COREDNS          CoreDNS v1.15.0
type Binaries struct {
	Kubelet    string
	Scheduler  string
	Kubectl    string
	Containerd string
	Shim       string
	Ctr        string
	Runc       string
	CNIDir     string
	Pause      string
	CoreDNS    string
}

// buildTimeout bounds nodebuild.Ensure when something has to be built.
const buildTimeout = 30 * time.Minute

// resolve fills in the empty fields and checks that every program exists.
func (b Binaries) resolve(log io.Writer) (Binaries, error) {
	fields := []struct {
		field *string
		env   string
		cache func(*nodebuild.Binaries) string
	}{
		{&b.Kubelet, "SOCKLB_NODE_KUBELET", func(n *nodebuild.Binaries) string { return n.KubeNode.Kubelet }},
		{&b.Scheduler, "SOCKLB_NODE_KUBE_SCHEDULER", func(n *nodebuild.Binaries) string { return n.KubeNode.Scheduler }},
		{&b.Kubectl, "SOCKLB_NODE_KUBECTL", func(n *nodebuild.Binaries) string { return n.KubeNode.Kubectl }},
		{&b.Containerd, "SOCKLB_NODE_CONTAINERD", func(n *nodebuild.Binaries) string { return n.Containerd.Containerd }},
		{&b.Shim, "SOCKLB_NODE_SHIM", func(n *nodebuild.Binaries) string { return n.Containerd.Shim }},
		{&b.Ctr, "SOCKLB_NODE_CTR", func(n *nodebuild.Binaries) string { return n.Containerd.Ctr }},
		{&b.Runc, "SOCKLB_NODE_RUNC", func(n *nodebuild.Binaries) string { return n.Runc.Path }},
		{&b.CNIDir, "SOCKLB_NODE_CNI_DIR", func(n *nodebuild.Binaries) string { return n.CNI.Dir }},
		{&b.Pause, "SOCKLB_NODE_PAUSE", func(n *nodebuild.Binaries) string { return n.Pause.Pause }},
		{&b.CoreDNS, "SOCKLB_NODE_COREDNS", func(n *nodebuild.Binaries) string { return n.CoreDNS.CoreDNS }},
	}
	missing := false
	for _, f := range fields {
		if *f.field == "" {
			*f.field = os.Getenv(f.env)
		}
		missing = missing || *f.field == ""
	}
	if missing {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		built, err := nodebuild.Ensure(ctx, log)
		if err != nil {
			return b, fmt.Errorf("node binaries: %w", err)
		}
		if built.Pause.Version != PauseVersion {
			return b, fmt.Errorf("node binaries: the pause binary is release %s, the sandbox image is tagged %s: update PauseVersion",
				built.Pause.Version, PauseImage)
		}
		for _, f := range fields {
			if *f.field == "" {
				*f.field = f.cache(built)
			}
		}
	}
	var errs []error
	for _, f := range fields {
		abs, err := filepath.Abs(*f.field)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*f.field = abs
		if f.field == &b.CNIDir {
			for _, p := range nodebuild.CNIPlugins {
				if err := checkExecutable(filepath.Join(abs, p)); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if err := checkExecutable(abs); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.env, err))
		}
	}
	if len(errs) > 0 {
		return b, fmt.Errorf("node binaries: %w", errors.Join(errs...))
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

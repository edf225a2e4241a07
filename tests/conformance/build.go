package conformance

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/socklb/socklb/tests/buildcache"
	"github.com/socklb/socklb/tests/e2e/kubebuild"
)

// ModulePath is where the e2ebin module lives in the repository.
const ModulePath = "tests/conformance/e2ebin"

const (
	e2ePackage     = "k8s.io/kubernetes/test/e2e"
	agnhostPackage = "k8s.io/kubernetes/test/images/agnhost"
)

// Binaries are the cached e2e.test and agnhost.
type Binaries struct {
	Dir            string
	E2ETest        string
	Agnhost        string
	AgnhostVersion string // test/images/agnhost/VERSION of the release: "2.66.1"
	Built          bool   // this call built them
}

// EnsureBinaries returns the cached e2e.test and agnhost, building them
// (CGO off) from the e2ebin module first when they are missing or stale.
// e2e.test gets the cluster binaries' version flags, so it reports the
// release the cluster runs; agnhost its release's VERSION, the tag the
// specs ask for.
func EnsureBinaries(ctx context.Context, log io.Writer) (*Binaries, error) {
	modDir, err := buildcache.ModuleDir(ctx, ModulePath)
	if err != nil {
		return nil, err
	}
	version, err := agnhostVersion(ctx, modDir)
	if err != nil {
		return nil, err
	}
	agnhostFlags := "-s -w -X main.Version=" + version
	stamp, err := buildcache.GoStamp(ctx, modDir, "ldflags "+kubebuild.LDFlags(), "test -c "+e2ePackage,
		"ldflags "+agnhostFlags, buildcache.Packages(buildcache.Package{Name: "agnhost", Path: agnhostPackage}))
	if err != nil {
		return nil, err
	}
	res, err := buildcache.Ensure(ctx, buildcache.Set{
		Name:     "e2e-" + kubebuild.KubernetesVersion,
		Files:    []string{"e2e.test", "agnhost"},
		Stamp:    stamp,
		Describe: "Kubernetes " + kubebuild.KubernetesVersion + " e2e.test and agnhost " + version,
		Cold:     "about 2 minutes",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			// -vet=off: go test's vet pass would analyze every package
			// e2e.test depends on (printf facts), about 3.5 minutes of
			// a cold build, for upstream code that is not ours to vet.
			cmd := buildcache.Command(ctx, "go", "test", "-c", "-vet=off", "-trimpath", "-ldflags", kubebuild.LDFlags(),
				"-o", filepath.Join(dir, "e2e.test"), e2ePackage)
			cmd.Dir = modDir
			cmd.Env = buildcache.GoEnv()
			if err := buildcache.Run(cmd, log); err != nil {
				return fmt.Errorf("go test -c %s in %s: %w", e2ePackage, modDir, err)
			}
			return buildcache.GoBuild(ctx, modDir, dir, agnhostFlags, nil,
				[]buildcache.Package{{Name: "agnhost", Path: agnhostPackage}}, log)
		},
	}, log)
	if err != nil {
		return nil, err
	}
	return &Binaries{
		Dir:            res.Dir,
		E2ETest:        res.Path("e2e.test"),
		Agnhost:        res.Path("agnhost"),
		AgnhostVersion: version,
		Built:          res.Built,
	}, nil
}

// agnhostVersion reads test/images/agnhost/VERSION of the k8s.io/kubernetes
// the module requires (downloading it first if need be).
func agnhostVersion(ctx context.Context, modDir string) (string, error) {
	dir, _, err := buildcache.ModuleSource(ctx, modDir, "k8s.io/kubernetes")
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "test", "images", "agnhost", "VERSION"))
	if err != nil {
		return "", fmt.Errorf("agnhost's version: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" || strings.ContainsAny(v, " \n/:") {
		return "", fmt.Errorf("agnhost's VERSION file holds %q", b)
	}
	return v, nil
}

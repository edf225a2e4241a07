package nodebuild

import (
	"context"
	"io"
	"strings"

	"github.com/socklb/socklb/tests/buildcache"
)

// Containerd is the cached containerd build.
type Containerd struct {
	Dir        string
	Containerd string
	Shim       string // containerd-shim-runc-v2
	Ctr        string
	Version    string // "v2.3.7", the version tests/node/ctrbin requires
	Built      bool   // this call built it
}

// CoreDNS is the cached CoreDNS build.
type CoreDNS struct {
	Dir     string
	CoreDNS string
	Version string // "v1.15.0", the version tests/node/dnsbin requires
	Built   bool   // this call built it
}

const (
	containerdModule = "github.com/containerd/containerd/v2"
	corednsModule    = "github.com/coredns/coredns"
)

// The main packages of the ctrbin and dnsbin modules' tools.
var (
	containerdPackages = []buildcache.Package{
		{Name: "containerd", Path: containerdModule + "/cmd/containerd"},
		{Name: "ctr", Path: containerdModule + "/cmd/ctr"},
	}
	shimPackages = []buildcache.Package{
		{Name: "containerd-shim-runc-v2", Path: containerdModule + "/cmd/containerd-shim-runc-v2"},
	}
	corednsPackages = []buildcache.Package{{Name: "coredns", Path: corednsModule}}
)

// ContainerdTags are the build tags of containerd and ctr: containerd's
// Makefile's (urfave_cli_no_docs) and the snapshotters that need cgo or
// host tools left out. The shim also gets no_grpc, as in that Makefile.
var ContainerdTags = []string{"urfave_cli_no_docs", "no_btrfs", "no_devmapper", "no_zfs"}

// CoreDNSTags are the build tags of CoreDNS's Makefile.
var CoreDNSTags = []string{"grpcnotrace"}

// containerdLDFlags are containerd's release link flags: its version
// variables (the revision is unknown in a module build) and no symbols.
func containerdLDFlags(version string) string {
	return strings.Join([]string{"-s", "-w",
		"-X", containerdModule + "/version.Version=" + version,
		"-X", containerdModule + "/version.Package=" + containerdModule,
	}, " ")
}

// EnsureContainerd returns the cached containerd, containerd-shim-runc-v2
// and ctr, building them (CGO off) from tests/node/ctrbin first when they
// are missing or stale.
func EnsureContainerd(ctx context.Context, log io.Writer) (*Containerd, error) {
	modDir, err := buildcache.ModuleDir(ctx, "tests/node/ctrbin")
	if err != nil {
		return nil, err
	}
	version, err := requiredVersion(ctx, modDir, containerdModule)
	if err != nil {
		return nil, err
	}
	shimTags := append(append([]string{}, ContainerdTags...), "no_grpc")
	ldflags := containerdLDFlags(version)
	stamp, err := buildcache.GoStamp(ctx, modDir, "ldflags "+ldflags,
		"tags "+strings.Join(ContainerdTags, ","), buildcache.Packages(containerdPackages...),
		"tags "+strings.Join(shimTags, ","), buildcache.Packages(shimPackages...))
	if err != nil {
		return nil, err
	}
	res, err := buildcache.Ensure(ctx, buildcache.Set{
		Name:     "containerd-" + version,
		Files:    []string{"containerd", "containerd-shim-runc-v2", "ctr"},
		Stamp:    stamp,
		Describe: "containerd " + version,
		Cold:     "about a minute",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			if err := buildcache.GoBuild(ctx, modDir, dir, ldflags, ContainerdTags, containerdPackages, log); err != nil {
				return err
			}
			return buildcache.GoBuild(ctx, modDir, dir, ldflags, shimTags, shimPackages, log)
		},
	}, log)
	if err != nil {
		return nil, err
	}
	return &Containerd{
		Dir:        res.Dir,
		Containerd: res.Path("containerd"),
		Shim:       res.Path("containerd-shim-runc-v2"),
		Ctr:        res.Path("ctr"),
		Version:    version,
		Built:      res.Built,
	}, nil
}

// EnsureCoreDNS returns the cached coredns, building it (CGO off, the
// plugins of CoreDNS's plugin.cfg) from tests/node/dnsbin first when it is
// missing or stale.
func EnsureCoreDNS(ctx context.Context, log io.Writer) (*CoreDNS, error) {
	modDir, err := buildcache.ModuleDir(ctx, "tests/node/dnsbin")
	if err != nil {
		return nil, err
	}
	version, err := requiredVersion(ctx, modDir, corednsModule)
	if err != nil {
		return nil, err
	}
	// coremain.GitCommit stays empty: a module build has no commit.
	const ldflags = "-s -w"
	stamp, err := buildcache.GoStamp(ctx, modDir, "ldflags "+ldflags,
		"tags "+strings.Join(CoreDNSTags, ","), buildcache.Packages(corednsPackages...))
	if err != nil {
		return nil, err
	}
	res, err := buildcache.Ensure(ctx, buildcache.Set{
		Name:     "coredns-" + version,
		Files:    []string{"coredns"},
		Stamp:    stamp,
		Describe: "CoreDNS " + version,
		Cold:     "about three minutes",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			return buildcache.GoBuild(ctx, modDir, dir, ldflags, CoreDNSTags, corednsPackages, log)
		},
	}, log)
	if err != nil {
		return nil, err
	}
	return &CoreDNS{Dir: res.Dir, CoreDNS: res.Path("coredns"), Version: version, Built: res.Built}, nil
}

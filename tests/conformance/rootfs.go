package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/socklb/socklb/tests/buildcache"
)

// The root filesystem under agnhost: Debian's essential packages (a shell,
// coreutils' seq) and the tools the specs run through `kubectl exec`: nc
// (-v -t|-u -w), curl and nslookup. Upstream's image is Alpine with the
// same tools; this one comes from the Debian mirror this kind of machine
// reaches.
var (
	rootfsSuite    = "bookworm"
	rootfsPackages = []string{"curl", "netcat-openbsd", "bind9-dnsutils"}
	// rootfsEpoch fixes every timestamp mmdebstrap writes.
	rootfsEpoch = "1700000000"
)

// defaultMirror is Debian's; $SOCKLB_CONFORMANCE_MIRROR replaces it.
const defaultMirror = "http://deb.debian.org/debian"

// Rootfs is the cached root filesystem archive.
type Rootfs struct {
	Path  string // an uncompressed tar archive
	Built bool
}

// EnsureRootfs returns the cached root filesystem, making it first with
// mmdebstrap (Debian's package; `make deps` installs it) when it is
// missing or was made from another suite, package list or mirror.
// mmdebstrap runs in a mount namespace of its own, so whatever it mounts
// in its chroot goes with it.
func EnsureRootfs(ctx context.Context, log io.Writer) (*Rootfs, error) {
	mmdebstrap, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return nil, fmt.Errorf("agnhost's root filesystem needs mmdebstrap (`make deps` installs it): %w", err)
	}
	mirror := os.Getenv("SOCKLB_CONFORMANCE_MIRROR")
	if mirror == "" {
		mirror = defaultMirror
	}
	args := []string{"--mount", "--propagation", "private", mmdebstrap,
		"--quiet", "--variant=essential", "--include=" + strings.Join(rootfsPackages, ","),
		"--skip=output/dev",
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		rootfsSuite}
	res, err := buildcache.Ensure(ctx, buildcache.Set{
		Name:     "agnhost-rootfs-" + rootfsSuite,
		Data:     []string{"rootfs.tar"},
		Stamp:    buildcache.Stamp([]byte(strings.Join(args[3:], " ")), []byte(mirror), []byte(rootfsEpoch)),
		Describe: "agnhost's Debian " + rootfsSuite + " root filesystem (" + strings.Join(rootfsPackages, ", ") + ")",
		Cold:     "about 2 minutes",
		Build: func(ctx context.Context, dir string, log io.Writer) error {
			out := filepath.Join(dir, "rootfs.tar")
			cmd := buildcache.Command(ctx, "unshare", append(args, out, mirror)...)
			cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+rootfsEpoch)
			if err := buildcache.Run(cmd, log); err != nil {
				return err
			}
			if fi, err := os.Stat(out); err != nil || fi.Size() == 0 {
				return errors.Join(errors.New("mmdebstrap wrote no archive"), err)
			}
			return nil
		},
	}, log)
	if err != nil {
		return nil, err
	}
	return &Rootfs{Path: res.Path("rootfs.tar"), Built: res.Built}, nil
}

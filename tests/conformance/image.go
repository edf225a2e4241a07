package conformance

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/socklb/socklb/internal/ociimage"
)

// WriteAgnhostImage writes agnhost's image, tagged AgnhostImage, as an
// archive `ctr images import` reads: the root filesystem, and /agnhost
// above it as entrypoint with `pause` as default command, as upstream's
// image has them.
func WriteAgnhostImage(file string, bins *Binaries, rootfs *Rootfs) error {
	img, err := ociimage.BuildFile(ociimage.File{
		Binary:        bins.Agnhost,
		Path:          "/agnhost",
		CreatedBy:     "socklb tests/conformance: /agnhost " + bins.AgnhostVersion,
		Base:          rootfs.Path,
		BaseCreatedBy: "socklb tests/conformance: mmdebstrap " + rootfsSuite,
		Config:        v1.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}},
	})
	if err != nil {
		return fmt.Errorf("agnhost image: %w", err)
	}
	return ociimage.WriteFile(file, img, []string{AgnhostImage(bins.AgnhostVersion)})
}

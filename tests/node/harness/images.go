package harness

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/socklb/socklb/internal/ociimage"
)

// PauseVersion is the pause release whose source (build/pause/linux/pause.c
// of the kubernetes module) the node's sandbox image is built from, and
// PauseImage its tag, which containerd's sandbox_image names. The image
// exists only in the node's containerd: it is made here and never pulled.
const (
	PauseVersion = "3.10.2"
	PauseImage   = "registry.k8s.io/pause:" + PauseVersion
)

// ImageSpec describes a one-file image: a static binary and its
// configuration.
type ImageSpec struct {
	// Binary is the static executable on the host.
	Binary string
	// Path is where it lives in the image, e.g. "/pause".
	Path string
	// Entrypoint and Cmd of the image; Entrypoint nil means [Path].
	Entrypoint []string
	Cmd        []string
	// User, e.g. "65535:65535"; empty means root.
	User string
	// Env; PATH is always set.
	Env []string
}

// BuildImage returns the image of spec (package ociimage's one-file
// image: the binary owned by root, mode 0755, at the Unix epoch, so the
// digest depends on the bytes alone), for linux and the binary's
// architecture.
func BuildImage(spec ImageSpec) (v1.Image, error) {
	entry := spec.Entrypoint
	if entry == nil {
		entry = []string{spec.Path}
	}
	return ociimage.BuildFile(ociimage.File{
		Binary:    spec.Binary,
		Path:      spec.Path,
		CreatedBy: "socklb tests/node/harness: " + spec.Path,
		Config:    v1.Config{Entrypoint: entry, Cmd: spec.Cmd, User: spec.User, Env: spec.Env},
	})
}

// WriteImage writes img tagged tag as an archive that `ctr images import`
// reads (package ociimage's format).
func WriteImage(file string, img v1.Image, tag string) error {
	return ociimage.WriteFile(file, img, []string{tag})
}

// pauseImageSpec is the sandbox image: pause as PID 1 of each pod, as
// the upstream image runs it (user 65535).
func pauseImageSpec(bin string) ImageSpec {
	return ImageSpec{Binary: bin, Path: "/pause", User: "65535:65535"}
}

package harness

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
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

// BuildImage returns the image of spec: one layer with the binary (mode
// 0755, owned by root, at the Unix epoch, so the digest depends on the
// bytes alone), for linux and this machine's architecture.
func BuildImage(spec ImageSpec) (v1.Image, error) {
	bin, err := os.ReadFile(spec.Binary)
	if err != nil {
		return nil, err
	}
	if !path.IsAbs(spec.Path) || path.Clean(spec.Path) != spec.Path || spec.Path == "/" {
		return nil, fmt.Errorf("image path %q: not an absolute file path", spec.Path)
	}
	layerTar, err := fileLayer(strings.TrimPrefix(spec.Path, "/"), bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer),
		tarball.WithCompressedCaching,
	)
	if err != nil {
		return nil, err
	}
	epoch := v1.Time{Time: time.Unix(0, 0).UTC()}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: epoch, CreatedBy: "socklb tests/node/harness: " + spec.Path},
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Created = epoch
	cfg.OS = "linux"
	cfg.Architecture = runtime.GOARCH
	entry := spec.Entrypoint
	if entry == nil {
		entry = []string{spec.Path}
	}
	cfg.Config = v1.Config{
		Entrypoint: entry,
		Cmd:        spec.Cmd,
		User:       spec.User,
		Env:        append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, spec.Env...),
		WorkingDir: "/",
	}
	return mutate.ConfigFile(img, cfg)
}

// WriteImage writes img tagged tag as an archive that `ctr images import`
// reads (package ociimage's format).
func WriteImage(file string, img v1.Image, tag string) error {
	return ociimage.WriteFile(file, img, []string{tag})
}

// fileLayer is an uncompressed layer holding the directories leading to
// rel and the file itself.
func fileLayer(rel string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	var dirs []string
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		dirs = append([]string{d + "/"}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data)), ModTime: mtime}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pauseImageSpec is the sandbox image: pause as PID 1 of each pod, as
// the upstream image runs it (user 65535).
func pauseImageSpec(bin string) ImageSpec {
	return ImageSpec{Binary: bin, Path: "/pause", User: "65535:65535"}
}

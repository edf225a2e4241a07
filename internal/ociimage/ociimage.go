// Package ociimage builds the agent's container image from the static agent
// binary alone, without Docker or a base image, and writes it as one tar
// archive that container runtimes import directly.
//
// The image has a single layer holding the binary at [BinaryPath]; nothing
// else is needed at run time: the binary is static, the in-cluster API
// configuration (token and CA certificate) is mounted by Kubernetes, and the
// host paths the agent works on (bpffs, the cgroup2 root) come from the
// DaemonSet's volumes. The image is reproducible: the same binary and the
// same [Options] give the same bytes and therefore the same digest.
//
// [BuildFile] makes the same kind of image of any static binary, the test
// node's images among them, optionally above a root filesystem archive
// (the conformance run's agnhost needs a shell and its tools).
package ociimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinaryPath is where the agent lives inside the image.
const BinaryPath = "/usr/local/bin/socklb-agent"

// Label keys from the OCI image specification's pre-defined annotations.
const (
	LabelTitle    = "org.opencontainers.image.title"
	LabelVersion  = "org.opencontainers.image.version"
	LabelSource   = "org.opencontainers.image.source"
	LabelRevision = "org.opencontainers.image.revision"
)

// defaultPath is the PATH most runtimes would otherwise add; it is set in
// the image so that `kubectl exec ... -- socklb-agent inspect` finds the
// binary whatever the runtime does.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var (
	// ErrNotELF means the file given as the agent is not an ELF executable.
	ErrNotELF = errors.New("not an ELF executable")
	// ErrNotStatic means the binary asks for a dynamic loader (PT_INTERP),
	// which an image without a base has not got.
	ErrNotStatic = errors.New("binary is dynamically linked (build it with CGO_ENABLED=0)")
	// ErrUnsupportedArch means the binary is for a machine with no Go
	// architecture name here.
	ErrUnsupportedArch = errors.New("unsupported ELF machine")
	// ErrNoVersion means Options.Version is empty.
	ErrNoVersion = errors.New("image version is empty")
)

// Options describe the image around the binary.
type Options struct {
	// Version is the agent's version (git describe), the image's
	// org.opencontainers.image.version label. Required.
	Version string
	// Revision is the source commit, the org.opencontainers.image.revision
	// label; omitted when empty.
	Revision string
	// Source is the repository URL, the org.opencontainers.image.source
	// label; omitted when empty.
	Source string
	// Created is the image's creation time and the modification time of
	// every file in it. Pass a time derived from the source (the commit
	// time, SOURCE_DATE_EPOCH), never the wall clock, so that builds are
	// reproducible. The zero value means the Unix epoch.
	Created time.Time
}

// Build returns the image of the static agent binary at binaryPath: one
// layer with the binary at BinaryPath (mode 0755, owned by root), entrypoint
// the binary, default command "run", user 0:0, for linux and the binary's
// architecture (read from its ELF header, so the image can never claim a
// platform its binary cannot run on).
func Build(binaryPath string, opts Options) (v1.Image, error) {
	if opts.Version == "" {
		return nil, ErrNoVersion
	}
	return BuildFile(File{
		Binary:    binaryPath,
		Path:      BinaryPath,
		CreatedBy: "socklb tools/mkimage: " + BinaryPath,
		Comment:   "the static socklb agent",
		Created:   opts.Created,
		Config: v1.Config{
			Entrypoint: []string{BinaryPath},
			Cmd:        []string{"run"},
			// Root, not an unprivileged user with capabilities: Kubernetes
			// puts the capabilities it adds for a non-root user only into the
			// bounding and permitted sets, not the effective one (the pod API
			// has no ambient capabilities), so a non-root agent could not load
			// BPF programs, attach them to the cgroup, enter other network
			// namespaces or mount bpffs. The DaemonSet runs it privileged; a
			// narrower securityContext has to keep UID 0 and add capabilities.
			User:   "0:0",
			Labels: labels(opts),
		},
	})
}

// File describes a one-file image: a static binary and its configuration.
type File struct {
	// Binary is the static executable on this machine.
	Binary string
	// Path is where it lives in the image, an absolute file path.
	Path string
	// CreatedBy and Comment are the layer's history entry.
	CreatedBy, Comment string
	// Created is the image's creation time and every file's modification
	// time (see Options.Created); the zero value means the Unix epoch.
	Created time.Time
	// Config is the image's run configuration. Its Env always starts with
	// a default PATH, and its WorkingDir is "/".
	Config v1.Config
	// Base, when set, is an uncompressed tar archive of a root filesystem
	// (a Debian one for a test image whose commands need a shell): the
	// image's first layer, below the binary's. BaseCreatedBy is its
	// history entry.
	Base, BaseCreatedBy string
}

// BuildFile returns the image of f: one layer with the directories
// leading to f.Path and the binary there (mode 0755, owned by root), above
// f.Base if there is one, for linux and the binary's architecture. The binary must be a static ELF
// executable. The same binary and File give the same digest.
func BuildFile(f File) (v1.Image, error) {
	if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
		return nil, fmt.Errorf("image path %q: not an absolute file path", f.Path)
	}
	bin, err := os.ReadFile(f.Binary)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	arch, err := staticArch(bin)
	if err != nil {
		return nil, fmt.Errorf("binary %s: %w", f.Binary, err)
	}
	created := f.Created.UTC()
	if created.Before(time.Unix(0, 0)) {
		created = time.Unix(0, 0).UTC()
	}
	// Whole seconds: tar headers keep no more, and the config and the
	// layer then agree on the same instant.
	created = created.Truncate(time.Second)

	layerTar, err := binaryLayer(strings.TrimPrefix(f.Path, "/"), bin, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer),
		// Computing the digest and writing the archive both read the
		// compressed layer; compress once.
		tarball.WithCompressedCaching,
	)
	if err != nil {
		return nil, fmt.Errorf("layer of %s: %w", f.Path, err)
	}

	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	var adds []mutate.Addendum
	if f.Base != "" {
		if err := checkTar(f.Base); err != nil {
			return nil, fmt.Errorf("base layer %s: %w", f.Base, err)
		}
		rootfs, err := tarball.LayerFromFile(f.Base, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
		if err != nil {
			return nil, fmt.Errorf("base layer %s: %w", f.Base, err)
		}
		adds = append(adds, mutate.Addendum{
			Layer:   rootfs,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: f.BaseCreatedBy},
		})
	}
	img, err := mutate.Append(base, append(adds, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: f.CreatedBy,
			Comment:   f.Comment,
		},
	})...)
	if err != nil {
		return nil, fmt.Errorf("append layer of %s: %w", f.Path, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Created = v1.Time{Time: created}
	cfg.OS = "linux"
	cfg.Architecture = arch
	cfg.Config = f.Config
	cfg.Config.Env = append([]string{defaultPath}, f.Config.Env...)
	cfg.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set image config: %w", err)
	}
	return img, nil
}

// checkTar reads the first header of the tar archive at path, so that a
// base that is not one fails here and not when the lazy layer is read.
func checkTar(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := tar.NewReader(f).Next(); err != nil {
		return fmt.Errorf("not a tar archive: %w", err)
	}
	return nil
}

func labels(opts Options) map[string]string {
	l := map[string]string{
		LabelTitle:   "socklb-agent",
		LabelVersion: opts.Version,
	}
	if opts.Source != "" {
		l[LabelSource] = opts.Source
	}
	if opts.Revision != "" {
		l[LabelRevision] = opts.Revision
	}
	return l
}

// staticArch checks that bin is an ELF executable without a program
// interpreter and returns its Go architecture name.
func staticArch(bin []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotELF, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("%w: ELF type %s", ErrNotELF, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", ErrNotStatic
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	default:
		return "", fmt.Errorf("%w: %s", ErrUnsupportedArch, f.Machine)
	}
}

// binaryLayer is the uncompressed layer: the directories leading to rel
// and the binary there, all owned by root, with fixed times and no user
// or group names, so that only the binary's bytes decide the digest.
func binaryLayer(rel string, bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(name string, typ byte, mode, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: typ,
			Name:     name,
			Mode:     mode,
			Size:     size,
			ModTime:  mtime,
		}
	}
	var dirs []string
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		dirs = append([]string{d + "/"}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(hdr(d, tar.TypeDir, 0o755, 0)); err != nil {
			return nil, fmt.Errorf("layer directory %s: %w", d, err)
		}
	}
	if err := tw.WriteHeader(hdr(rel, tar.TypeReg, 0o755, int64(len(bin)))); err != nil {
		return nil, fmt.Errorf("layer file %s: %w", rel, err)
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, fmt.Errorf("layer file %s: %w", rel, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}

package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotation keys of the entries of index.json. containerd names an
// imported image after io.containerd.image.name, a full reference, as
// `docker save` writes it; the OCI key holds the tag alone.
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// ErrNoTags means Write was given no tag: an untagged image is imported by
// containerd under no name, so the kubelet could never find it.
var ErrNoTags = errors.New("no image tag given")

// WriteFile writes img with its tags to path through a temporary file in
// the same directory, so a failed build never leaves a truncated archive
// that a later import would accept as far as it goes.
func WriteFile(path string, img v1.Image, tags []string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create image archive: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := Write(f, img, tags); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("image archive mode: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close image archive: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename image archive: %w", err)
	}
	return nil
}

// Write writes img to w as one tar archive in two formats at once, as
// `docker save` does since Docker 25:
//
//   - an OCI image layout (oci-layout, index.json, blobs/sha256/...), which
//     containerd prefers (`ctr images import`, `kind load image-archive`),
//     so nodes keep the image under the digest this package computed;
//   - a docker-archive manifest.json pointing at the same blobs, for
//     `docker load`, `podman load` and `crane push`.
//
// Each tag ("socklb-agent:v1.2.3") names the image in both. The archive is
// a function of img and tags alone: entries in a fixed order, owned by
// root, with the image's creation time as their modification time.
//
// go-containerregistry's tarball.Write writes only the docker format, and
// orders several tags by map iteration, so the same image could give
// different archives; this writer keeps the library's types and digests
// and only lays out the tar.
func Write(w io.Writer, img v1.Image, tags []string) error {
	if len(tags) == 0 {
		return ErrNoTags
	}
	refs := make([]name.Tag, len(tags))
	for i, t := range tags {
		ref, err := name.NewTag(t)
		if err != nil {
			return fmt.Errorf("image tag %q: %w", t, err)
		}
		refs[i] = ref
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("image config digest: %w", err)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	mediaType, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("image media type: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("image layers: %w", err)
	}

	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	docker := tarball.Descriptor{Config: blobPath(cfgName)}
	for _, ref := range refs {
		index.Manifests = append(index.Manifests, v1.Descriptor{
			MediaType: mediaType,
			Size:      int64(len(rawManifest)),
			Digest:    digest,
			Platform:  cfg.Platform(),
			Annotations: map[string]string{
				annotationImageName: fullName(ref),
				annotationRefName:   ref.TagStr(),
			},
		})
		docker.RepoTags = append(docker.RepoTags, ref.String())
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer digest: %w", err)
		}
		docker.Layers = append(docker.Layers, blobPath(d))
	}
	rawIndex, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("encode index.json: %w", err)
	}
	rawDocker, err := json.Marshal(tarball.Manifest{docker})
	if err != nil {
		return fmt.Errorf("encode manifest.json: %w", err)
	}

	aw := archiveWriter{tw: tar.NewWriter(w), mtime: cfg.Created.UTC().Truncate(time.Second)}
	aw.bytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	aw.dir("blobs/")
	aw.dir("blobs/sha256/")
	aw.bytes(blobPath(cfgName), rawCfg)
	seen := map[v1.Hash]bool{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer digest: %w", err)
		}
		if seen[d] {
			continue
		}
		seen[d] = true
		aw.layer(l, d)
	}
	aw.bytes(blobPath(digest), rawManifest)
	aw.bytes("index.json", rawIndex)
	aw.bytes("manifest.json", rawDocker)
	if aw.err != nil {
		return aw.err
	}
	if err := aw.tw.Close(); err != nil {
		return fmt.Errorf("close image archive: %w", err)
	}
	return nil
}

// fullName is the reference as containerd and the kubelet spell it: images
// on Docker Hub are docker.io/library/NAME:TAG, where go-containerregistry
// says index.docker.io, a name containerd would store verbatim and the
// kubelet would then not find.
func fullName(ref name.Tag) string {
	if ref.RegistryStr() == name.DefaultRegistry {
		return "docker.io/" + ref.RepositoryStr() + ":" + ref.TagStr()
	}
	return ref.Name()
}

func blobPath(h v1.Hash) string {
	return "blobs/" + h.Algorithm + "/" + h.Hex
}

// archiveWriter writes tar entries until the first error, which it keeps.
type archiveWriter struct {
	tw    *tar.Writer
	mtime time.Time
	err   error
}

func (a *archiveWriter) header(name string, typ byte, mode, size int64) {
	if a.err != nil {
		return
	}
	if err := a.tw.WriteHeader(&tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  a.mtime,
	}); err != nil {
		a.err = fmt.Errorf("archive entry %s: %w", name, err)
	}
}

func (a *archiveWriter) dir(name string) {
	a.header(name, tar.TypeDir, 0o755, 0)
}

func (a *archiveWriter) bytes(name string, b []byte) {
	a.file(name, bytes.NewReader(b), int64(len(b)))
}

// file writes one regular file of size bytes read from r.
func (a *archiveWriter) file(name string, r io.Reader, size int64) {
	a.header(name, tar.TypeReg, 0o644, size)
	if a.err != nil {
		return
	}
	n, err := io.Copy(a.tw, r)
	if err == nil && n != size {
		err = fmt.Errorf("wrote %d bytes, want %d", n, size)
	}
	if err != nil {
		a.err = fmt.Errorf("archive entry %s: %w", name, err)
	}
}

func (a *archiveWriter) layer(l v1.Layer, d v1.Hash) {
	if a.err != nil {
		return
	}
	size, err := l.Size()
	if err != nil {
		a.err = fmt.Errorf("layer %s size: %w", d, err)
		return
	}
	rc, err := l.Compressed()
	if err != nil {
		a.err = fmt.Errorf("layer %s: %w", d, err)
		return
	}
	defer rc.Close()
	a.file(blobPath(d), rc, size)
}

package ociimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/socklb/socklb/internal/ociimage"
)

var (
	testCreated = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	testOpts    = ociimage.Options{
		Version:  "v1.2.3-4-gabcdef0",
		Revision: "abcdef0123456789abcdef0123456789abcdef01",
		Source:   "https://github.com/socklb/socklb",
		Created:  testCreated,
	}
	testTags = []string{"socklb-agent:v1.2.3-4-gabcdef0", "socklb-agent:latest"}
)

// fakeELF returns a minimal ELF64 executable for machine: one PT_LOAD
// segment, a PT_INTERP one when dynamic, and payload after the headers so
// that different payloads make different binaries.
func fakeELF(t *testing.T, machine elf.Machine, dynamic bool, payload string) []byte {
	t.Helper()
	const ehsize, phentsize = 64, 56
	interp := "/lib64/ld-linux-x86-64.so.2\x00"
	nprogs := 1
	if dynamic {
		nprogs = 2
	}
	dataOff := uint64(ehsize + nprogs*phentsize)
	total := dataOff + uint64(len(interp)+len(payload))
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Entry: 0x400000 + dataOff, Phoff: ehsize, Ehsize: ehsize,
		Phentsize: phentsize, Phnum: uint16(nprogs), Shentsize: 64,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	progs := []elf.Prog64{{
		Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X),
		Vaddr: 0x400000, Paddr: 0x400000, Filesz: total, Memsz: total, Align: 0x1000,
	}}
	if dynamic {
		progs = append(progs, elf.Prog64{
			Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: dataOff,
			Vaddr: 0x400000 + dataOff, Paddr: 0x400000 + dataOff,
			Filesz: uint64(len(interp)), Memsz: uint64(len(interp)), Align: 1,
		})
	}
	var buf bytes.Buffer
	for _, v := range []any{h, progs} {
		if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
			t.Fatal(err)
		}
	}
	buf.WriteString(interp)
	buf.WriteString(payload)
	return buf.Bytes()
}

func writeFile(t *testing.T, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "socklb-agent")
	if err := os.WriteFile(p, content, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildArchive builds the image of binary and writes it with testTags.
func buildArchive(t *testing.T, binary string, opts ociimage.Options) (v1.Image, string) {
	t.Helper()
	img, err := ociimage.Build(binary, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := ociimage.WriteFile(out, img, testTags); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	return img, out
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, r io.Reader) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar entry %s: %v", hdr.Name, err)
		}
		out = append(out, tarEntry{hdr, data})
	}
}

func readTarFile(t *testing.T, path string) []tarEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readTar(t, f)
}

// layerEntries reads the only layer of img.
func layerEntries(t *testing.T, img v1.Image) []tarEntry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return readTar(t, rc)
}

// checkImage checks the configuration and the layer of an image, as built
// or as read back through either of the archive's two formats.
func checkImage(t *testing.T, img v1.Image, binary []byte, arch string, opts ociimage.Options) {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, arch)
	}
	if !cfg.Created.Equal(opts.Created) {
		t.Errorf("created %v, want %v", cfg.Created, opts.Created)
	}
	c := cfg.Config
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/socklb-agent"}) {
		t.Errorf("entrypoint %q", c.Entrypoint)
	}
	if !slices.Equal(c.Cmd, []string{"run"}) {
		t.Errorf("cmd %q", c.Cmd)
	}
	if c.User != "0:0" {
		t.Errorf("user %q, want 0:0", c.User)
	}
	if !slices.Equal(c.Env, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}) {
		t.Errorf("env %q", c.Env)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":    "socklb-agent",
		"org.opencontainers.image.version":  opts.Version,
		"org.opencontainers.image.source":   opts.Source,
		"org.opencontainers.image.revision": opts.Revision,
	}
	if len(c.Labels) != len(wantLabels) {
		t.Errorf("labels %v, want %v", c.Labels, wantLabels)
	}
	for k, v := range wantLabels {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	if len(cfg.History) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		t.Errorf("history %d entries, diff_ids %d, want 1 and 1", len(cfg.History), len(cfg.RootFS.DiffIDs))
	}

	type file struct {
		name string
		typ  byte
		mode int64
	}
	want := []file{
		{"usr/", tar.TypeDir, 0o755},
		{"usr/local/", tar.TypeDir, 0o755},
		{"usr/local/bin/", tar.TypeDir, 0o755},
		{"usr/local/bin/socklb-agent", tar.TypeReg, 0o755},
	}
	entries := layerEntries(t, img)
	var got []file
	for _, e := range entries {
		h := e.hdr
		got = append(got, file{h.Name, h.Typeflag, h.Mode})
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s owned by %d(%q):%d(%q), want 0:0 without names", h.Name, h.Uid, h.Uname, h.Gid, h.Gname)
		}
		if !h.ModTime.Equal(opts.Created) {
			t.Errorf("%s mtime %v, want %v", h.Name, h.ModTime, opts.Created)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("layer files\n got %v\nwant %v", got, want)
	}
	if !bytes.Equal(entries[3].data, binary) {
		t.Errorf("binary in the layer differs from the input (%d vs %d bytes)", len(entries[3].data), len(binary))
	}
}

func TestBuildAndWrite(t *testing.T) {
	for _, tc := range []struct {
		machine elf.Machine
		arch    string
	}{
		{elf.EM_X86_64, "amd64"},
		{elf.EM_AARCH64, "arm64"},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			bin := fakeELF(t, tc.machine, false, "agent")
			img, archive := buildArchive(t, writeFile(t, bin), testOpts)
			digest, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, img, bin, tc.arch, testOpts)
			checkArchive(t, archive, digest, bin, tc.arch, testOpts)
		})
	}
}

// checkArchive reads the archive through both of its formats and returns
// the image read through the OCI layout.
func checkArchive(t *testing.T, archive string, digest v1.Hash, bin []byte, arch string, opts ociimage.Options) v1.Image {
	t.Helper()
	// The archive itself: entries in a fixed order, owned by root, times
	// from the image.
	entries := readTarFile(t, archive)
	var names []string
	for _, e := range entries {
		names = append(names, e.hdr.Name)
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || !e.hdr.ModTime.Equal(opts.Created) {
			t.Errorf("archive entry %s: owner %d:%d mtime %v", e.hdr.Name, e.hdr.Uid, e.hdr.Gid, e.hdr.ModTime)
		}
	}
	if len(names) != 8 || names[0] != "oci-layout" || names[1] != "blobs/" || names[2] != "blobs/sha256/" ||
		names[6] != "index.json" || names[7] != "manifest.json" || names[5] != "blobs/sha256/"+digest.Hex {
		t.Errorf("archive entries %q", names)
	}

	// OCI image layout, as containerd imports it.
	dir := t.TempDir()
	for _, e := range entries {
		p := filepath.Join(dir, filepath.FromSlash(e.hdr.Name))
		var err error
		if e.hdr.Typeflag == tar.TypeDir {
			err = os.MkdirAll(p, 0o755)
		} else {
			err = os.WriteFile(p, e.data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var wantNames []string
	for _, tag := range testTags {
		wantNames = append(wantNames, "docker.io/library/"+tag)
	}
	if len(im.Manifests) != len(wantNames) {
		t.Fatalf("index.json has %d manifests, want %d", len(im.Manifests), len(wantNames))
	}
	for i, d := range im.Manifests {
		if d.Digest != digest || d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("index entry %d: %s %s, want %s %s", i, d.MediaType, d.Digest, types.OCIManifestSchema1, digest)
		}
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != arch {
			t.Errorf("index entry %d: platform %v", i, d.Platform)
		}
		if got := d.Annotations["io.containerd.image.name"]; got != wantNames[i] {
			t.Errorf("index entry %d: io.containerd.image.name %q, want %q", i, got, wantNames[i])
		}
		if got, want := d.Annotations["org.opencontainers.image.ref.name"], wantNames[i][strings.LastIndex(wantNames[i], ":")+1:]; got != want {
			t.Errorf("index entry %d: org.opencontainers.image.ref.name %q, want %q", i, got, want)
		}
	}
	ociImg, err := idx.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ociImg.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("manifest media types: config %s, layers %v", m.Config.MediaType, m.Layers)
	}
	// Every blob matches its digest and size, the manifest its config.
	if err := validate.Image(ociImg); err != nil {
		t.Errorf("validate.Image (OCI layout): %v", err)
	}
	checkImage(t, ociImg, bin, arch, opts)

	// docker-archive, as docker load, podman load and crane push read it.
	var dm tarball.Manifest
	for _, e := range entries {
		if e.hdr.Name == "manifest.json" {
			if err := json.Unmarshal(e.data, &dm); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(dm) != 1 || !slices.Equal(dm[0].RepoTags, testTags) {
		t.Errorf("manifest.json %+v, want one image tagged %q", dm, testTags)
	}
	for _, tag := range append([]string{""}, testTags...) {
		var ref *name.Tag
		if tag != "" {
			r, err := name.NewTag(tag)
			if err != nil {
				t.Fatal(err)
			}
			ref = &r
		}
		dockerImg, err := tarball.ImageFromPath(archive, ref)
		if err != nil {
			t.Fatalf("tarball.ImageFromPath(%q): %v", tag, err)
		}
		if err := validate.Image(dockerImg); err != nil {
			t.Errorf("validate.Image (docker-archive): %v", err)
		}
		checkImage(t, dockerImg, bin, arch, opts)
		ociCfg, _ := ociImg.ConfigName()
		dockerCfg, err := dockerImg.ConfigName()
		if err != nil || dockerCfg != ociCfg {
			t.Errorf("docker view config %s (%v), OCI view %s", dockerCfg, err, ociCfg)
		}
	}
	return ociImg
}

func TestReproducible(t *testing.T) {
	bin := writeFile(t, fakeELF(t, elf.EM_X86_64, false, "agent"))
	img1, a1 := buildArchive(t, bin, testOpts)
	img2, a2 := buildArchive(t, bin, testOpts)
	d1, _ := img1.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("same input, digests %s and %s", d1, d2)
	}
	b1, _ := os.ReadFile(a1)
	b2, _ := os.ReadFile(a2)
	if !bytes.Equal(b1, b2) {
		t.Errorf("same input, archives differ (%d and %d bytes)", len(b1), len(b2))
	}

	// And the digest does depend on what it should depend on.
	other := writeFile(t, fakeELF(t, elf.EM_X86_64, false, "agenT"))
	later := testOpts
	later.Created = testCreated.Add(time.Second)
	newer := testOpts
	newer.Version = "v1.2.4"
	for what, img := range map[string]v1.Image{
		"binary":  mustBuild(t, other, testOpts),
		"created": mustBuild(t, bin, later),
		"version": mustBuild(t, bin, newer),
	} {
		if d, _ := img.Digest(); d == d1 {
			t.Errorf("another %s, same digest %s", what, d)
		}
	}
}

func mustBuild(t *testing.T, binary string, opts ociimage.Options) v1.Image {
	t.Helper()
	img, err := ociimage.Build(binary, opts)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuildRejects(t *testing.T) {
	noVersion := testOpts
	noVersion.Version = ""
	for _, tc := range []struct {
		name   string
		binary string
		opts   ociimage.Options
		want   error
	}{
		{"missing", filepath.Join(t.TempDir(), "none"), testOpts, fs.ErrNotExist},
		{"script", writeFile(t, []byte("#!/bin/sh\necho hi\n")), testOpts, ociimage.ErrNotELF},
		{"dynamic", writeFile(t, fakeELF(t, elf.EM_X86_64, true, "")), testOpts, ociimage.ErrNotStatic},
		{"riscv", writeFile(t, fakeELF(t, elf.EM_RISCV, false, "")), testOpts, ociimage.ErrUnsupportedArch},
		{"no version", writeFile(t, fakeELF(t, elf.EM_X86_64, false, "")), noVersion, ociimage.ErrNoVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ociimage.Build(tc.binary, tc.opts); !errors.Is(err, tc.want) {
				t.Errorf("Build: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWriteFileRejects(t *testing.T) {
	img := mustBuild(t, writeFile(t, fakeELF(t, elf.EM_X86_64, false, "")), testOpts)
	for _, tc := range []struct {
		name string
		tags []string
		want error
	}{
		{"no tags", nil, ociimage.ErrNoTags},
		{"bad tag", []string{"socklb-agent:no spaces"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := ociimage.WriteFile(filepath.Join(dir, "image.tar"), img, tc.tags)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("WriteFile: %v, want %v", err, tc.want)
			}
			// No archive and no temporary file is left behind.
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Errorf("left in the output directory: %v", left)
			}
		})
	}
}

// TestRealAgentImage builds the real agent as `make build` does, makes its
// image, and checks that the binary read back from the archive is static
// and runs.
func TestRealAgentImage(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "socklb-agent")
	const version = "ociimage-test"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", agent, "github.com/socklb/socklb/cmd/agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOpts
	opts.Version = version
	img, archive := buildArchive(t, agent, opts)
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	// The binary as a node gets it: read through the OCI layout.
	back := checkArchive(t, archive, digest, bin, runtime.GOARCH, opts)
	extracted := layerEntries(t, back)[3].data

	f, err := elf.NewFile(bytes.NewReader(extracted))
	if err != nil {
		t.Fatalf("binary in the image is not ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("binary in the image has a program interpreter: not static")
		}
	}
	f.Close()

	run := filepath.Join(dir, "from-image")
	if err := os.WriteFile(run, extracted, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, run, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", run, err, out)
	}
	if !strings.Contains(string(out), "socklb-agent "+version) {
		t.Errorf("version printed %q, want socklb-agent %s", out, version)
	}
	t.Logf("image %s of the real agent: %d-byte binary", digest, len(bin))
}

// TestBuildFileWithBase: a base root filesystem becomes the first layer,
// the binary's the second, and the flattened image holds both; a base
// that is not a tar archive is an error that names it.
func TestBuildFileWithBase(t *testing.T) {
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	for _, h := range []*tar.Header{
		{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("sh"))
		}
	}
	tw.Close()
	base := writeFile(t, rootfs.Bytes())
	bin := writeFile(t, fakeELF(t, elf.EM_X86_64, false, "tool"))
	img, err := ociimage.BuildFile(ociimage.File{Binary: bin, Path: "/tool", Base: base, BaseCreatedBy: "rootfs"})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "image.tar")
	if err := ociimage.WriteFile(archive, img, []string{"localhost/tool:1"}); err != nil {
		t.Fatal(err)
	}
	// Read back as docker load would: every blob matches its digest.
	if img, err = tarball.ImageFromPath(archive, nil); err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v; want 2", len(layers), err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.History) != 2 || cfg.History[0].CreatedBy != "rootfs" {
		t.Errorf("history %+v, want the base first", cfg.History)
	}
	var files []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				files = append(files, h.Name)
			}
		}
		rc.Close()
	}
	if !slices.Equal(files, []string{"usr/bin/sh", "tool"}) {
		t.Errorf("files %v, want usr/bin/sh in the base and tool above it", files)
	}

	if _, err := ociimage.BuildFile(ociimage.File{Binary: bin, Path: "/tool", Base: bin}); err == nil {
		t.Error("a base that is an ELF binary, not a tar archive: no error")
	}
}

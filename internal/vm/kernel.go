package vm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrNoPackage: apt does not know the kernel package (no index, or the
// name is wrong).
var ErrNoPackage = errors.New("kernel package not found")

// Kernel is one Debian kernel, unpacked in the cache.
type Kernel struct {
	// Name is what the kernel was asked for as (e.g. "6.1").
	Name string `json:"name"`
	// Package and Version are the Debian package it came from.
	Package string `json:"package"`
	Version string `json:"version"`
	// Release is its `uname -r`.
	Release string `json:"release"`
	// Compression is how its vmlinuz was compressed.
	Compression string `json:"compression"`
	// Dir holds vmlinux, config and modules/*.ko (uncompressed).
	Dir string `json:"-"`
	// Modules are the module names in Dir/modules, in load order
	// (dependencies first).
	Modules []string `json:"modules"`
}

// Vmlinux is the path of the uncompressed ELF kernel.
func (k *Kernel) Vmlinux() string { return filepath.Join(k.Dir, "vmlinux") }

// ModulePath is the path of an uncompressed module.
func (k *Kernel) ModulePath(name string) string {
	return filepath.Join(k.Dir, "modules", name+".ko")
}

// ResolvePackage asks apt which kernel image package the meta-package
// meta depends on now (linux-image-cloud-amd64 → linux-image-6.1.0-N-…),
// and that package's candidate version.
func ResolvePackage(ctx context.Context, meta string) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "--no-recommends", "--no-suggests", meta).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache depends %s: %w (run apt-get update)", meta, errors.Join(ErrNoPackage, err))
	}
	for line := range strings.Lines(string(out)) {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			pkg = dep
			break
		}
	}
	if pkg == "" {
		if strings.HasPrefix(meta, "linux-image-") && !strings.Contains(string(out), "Depends:") {
			// Already a concrete image package.
			pkg = meta
		} else {
			return "", "", fmt.Errorf("%s depends on no linux-image package: %w", meta, ErrNoPackage)
		}
	}
	out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %w", pkg, errors.Join(ErrNoPackage, err))
	}
	for line := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return pkg, strings.TrimSpace(v), nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no version: %w", pkg, ErrNoPackage)
}

// FetchOptions say where kernels are cached and what to take out of them.
type FetchOptions struct {
	// CacheDir holds one directory per package version.
	CacheDir string
	// Modules are loaded in the guest (with their dependencies), since
	// Debian builds them as modules: veth for sandbox.Wire.
	Modules []string
	Logger  *slog.Logger
}

// Fetch returns the kernel of package pkg at version from the cache, or
// downloads it with apt-get, takes the vmlinux, config and the wanted
// modules out of it, and caches them. The host's /boot is never touched.
func Fetch(ctx context.Context, name, pkg, version string, opts FetchOptions) (*Kernel, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(opts.CacheDir, strings.ReplaceAll(pkg+"_"+version, "/", "_"))
	if k, err := loadCached(dir, opts.Modules); err == nil {
		k.Name = name
		return k, nil
	}
	log.Info("fetching kernel", "package", pkg, "version", version, "cache", dir)
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(opts.CacheDir, ".fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	// apt drops to the _apt user for downloads unless told otherwise,
	// and that user cannot write into a root-owned cache.
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg+"="+version)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download %s=%s: %w\n%s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: found %d .deb files", pkg, len(debs))
	}
	k := &Kernel{Name: name, Package: pkg, Version: version}
	if err := unpack(ctx, debs[0], tmp, k, opts.Modules); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", filepath.Base(debs[0]), err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, err
	}
	meta, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	// kernel.json is written last: a directory without it is incomplete.
	if err := os.WriteFile(filepath.Join(tmp, "kernel.json"), meta, 0o644); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	k.Dir = dir
	return k, nil
}

func loadCached(dir string, modules []string) (*Kernel, error) {
	data, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil, err
	}
	var k Kernel
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, err
	}
	k.Dir = dir
	for _, m := range modules {
		if !slices.Contains(k.Modules, moduleName(m)) {
			return nil, fmt.Errorf("cached kernel lacks module %s", m)
		}
	}
	for _, m := range k.Modules {
		if _, err := os.Stat(k.ModulePath(m)); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(k.Vmlinux()); err != nil {
		return nil, err
	}
	return &k, nil
}

// unpack reads the package's data archive through dpkg-deb (never
// installing it): boot/vmlinuz-* becomes dir/vmlinux, boot/config-*
// dir/config, and the wanted modules, with the modules they depend on,
// dir/modules/NAME.ko.
func unpack(ctx context.Context, deb, dir string, k *Kernel, modules []string) error {
	want := map[string]bool{}
	roots := make([]string, len(modules))
	for i, m := range modules {
		roots[i] = moduleName(m)
		want[roots[i]] = true
	}
	found := map[string][]byte{}
	deps := map[string][]string{}
	// A module's dependencies are known only once it is read, so the
	// archive is read again while new ones turn up (veth has none).
	for pass := 0; ; pass++ {
		if err := readDeb(ctx, deb, func(name string, r io.Reader) error {
			base := path.Base(name)
			switch {
			case pass == 0 && strings.HasPrefix(name, "./boot/vmlinuz-"):
				img, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				vmlinux, comp, err := ExtractVmlinux(img)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				k.Release, k.Compression = strings.TrimPrefix(base, "vmlinuz-"), comp
				return os.WriteFile(filepath.Join(dir, "vmlinux"), vmlinux, 0o644)
			case pass == 0 && strings.HasPrefix(name, "./boot/config-"):
				data, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				return os.WriteFile(filepath.Join(dir, "config"), data, 0o644)
			case strings.Contains(name, "/kernel/") && strings.Contains(base, ".ko"):
				mod, ext, _ := strings.Cut(base, ".ko")
				mod = moduleName(mod)
				if !want[mod] || found[mod] != nil {
					return nil
				}
				data, err := decompressModule(r, ext)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				found[mod] = data
			}
			return nil
		}); err != nil {
			return err
		}
		if k.Release == "" {
			return errors.New("no boot/vmlinuz-* in the package")
		}
		added := false
		for mod, data := range found {
			if _, ok := deps[mod]; ok {
				continue
			}
			ds, err := moduleDepends(data)
			if err != nil {
				return fmt.Errorf("module %s: %w", mod, err)
			}
			deps[mod] = ds
			for _, d := range ds {
				if !want[d] {
					want[d], added = true, true
				}
			}
		}
		if !added {
			break
		}
	}
	order, err := loadOrder(roots, deps)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
		return err
	}
	for _, m := range order {
		if err := os.WriteFile(filepath.Join(dir, "modules", m+".ko"), found[m], 0o644); err != nil {
			return err
		}
	}
	k.Modules = order
	return nil
}

// loadOrder puts every module after the ones it depends on; deps has an
// entry for every module found in the package.
func loadOrder(roots []string, deps map[string][]string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(m string) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", m)
		case 2:
			return nil
		}
		ds, ok := deps[m]
		if !ok {
			return fmt.Errorf("module %s is not in the package (built in, or named differently?)", m)
		}
		state[m] = 1
		for _, d := range ds {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, r := range roots {
		if err := visit(r); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func readDeb(ctx context.Context, deb string, fn func(name string, r io.Reader) error) error {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dpkg-deb: %w", err)
	}
	tr := tar.NewReader(out)
	var readErr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := fn(h.Name, tr); err != nil {
			readErr = err
			break
		}
	}
	// Drain, so that dpkg-deb is not killed by a closed pipe.
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return errors.Join(readErr, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, stderr.Bytes()))
	}
	return readErr
}

// decompressModule undoes the module compression Debian uses (6.12: xz).
func decompressModule(r io.Reader, ext string) ([]byte, error) {
	switch ext {
	case "":
		return io.ReadAll(r)
	case ".xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(x)
	case ".zst":
		z, err := zstd.NewReader(r)
		if err != nil {
			return nil, err
		}
		defer z.Close()
		return io.ReadAll(z)
	case ".gz":
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(z)
	}
	return nil, fmt.Errorf("unknown module compression %q", ext)
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	for entry := range bytes.SplitSeq(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(entry, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// moduleName is how depends= names a module: with underscores, where a
// few module files have dashes.
func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

package vm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
)

// Initramfs writes a zstd-compressed newc cpio archive, the format the
// kernel unpacks into its root file system. Parent directories are added
// as needed.
type Initramfs struct {
	zw   *zstd.Encoder
	cw   *cpio.Writer
	dirs map[string]bool
	ino  int64
}

// NewInitramfs writes an archive to w; Close finishes it.
func NewInitramfs(w io.Writer) (*Initramfs, error) {
	// The kernel's zstd needs a window it can allocate at boot; 8 MiB
	// is what its own build uses for initramfs images.
	zw, err := zstd.NewWriter(w, zstd.WithWindowSize(8<<20), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	return &Initramfs{zw: zw, cw: cpio.NewWriter(zw), dirs: map[string]bool{"": true, ".": true, "/": true}}, nil
}

func (a *Initramfs) header(name string, mode cpio.FileMode, size int64) error {
	a.ino++
	links := 1
	if mode.IsDir() {
		links = 2
	}
	return a.cw.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: size, Inode: a.ino, Links: links})
}

// clean turns an absolute path into the archive's relative form.
func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// Dir adds a directory and its parents.
func (a *Initramfs) Dir(name string) error {
	name = clean(name)
	if a.dirs[name] {
		return nil
	}
	if err := a.Dir(path.Dir(name)); err != nil {
		return err
	}
	a.dirs[name] = true
	return a.header(name, cpio.TypeDir|0o755, 0)
}

// File adds a regular file with data.
func (a *Initramfs) File(name string, mode os.FileMode, data []byte) error {
	return a.file(name, mode, int64(len(data)), bytes.NewReader(data))
}

func (a *Initramfs) file(name string, mode os.FileMode, size int64, r io.Reader) error {
	name = clean(name)
	if err := a.Dir(path.Dir(name)); err != nil {
		return err
	}
	if err := a.header(name, cpio.TypeReg|cpio.FileMode(mode.Perm()), size); err != nil {
		return err
	}
	n, err := io.Copy(a.cw, r)
	if err == nil && n != size {
		err = fmt.Errorf("%s: wrote %d of %d bytes", name, n, size)
	}
	return err
}

// CopyFile adds the host file src (symbolic links followed) as name.
func (a *Initramfs) CopyFile(name, src string, mode os.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return a.file(name, mode, st.Size(), f)
}

// Symlink adds name pointing at target.
func (a *Initramfs) Symlink(name, target string) error {
	name = clean(name)
	if err := a.Dir(path.Dir(name)); err != nil {
		return err
	}
	if err := a.header(name, cpio.TypeSymlink|0o777, int64(len(target))); err != nil {
		return err
	}
	_, err := io.WriteString(a.cw, target)
	return err
}

// Close writes the trailer and flushes the compressor.
func (a *Initramfs) Close() error {
	return errors.Join(a.cw.Close(), a.zw.Close())
}

// IsStatic reports whether the ELF program at p needs no dynamic loader.
func IsStatic(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// SharedLibraries lists the dynamic loader and the libraries the host
// program p loads, as the host's ldd resolves them: copied to the same
// paths in the guest, they let a host tool run there unchanged.
func SharedLibraries(p string) ([]string, error) {
	static, err := IsStatic(p)
	if err != nil || static {
		return nil, err
	}
	out, err := exec.Command("ldd", p).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", p, err)
	}
	return parseLdd(out), nil
}

// parseLdd takes the absolute paths out of ldd's output:
// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and
// "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vDSO has no file.
func parseLdd(out []byte) []string {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i, w := range f {
			if filepath.IsAbs(w) && (i == 0 || f[i-1] == "=>") {
				libs = append(libs, w)
				break
			}
		}
	}
	return libs
}

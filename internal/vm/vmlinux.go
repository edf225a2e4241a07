package vm

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// ErrNoVmlinux: no compressed ELF kernel was found in the image.
var ErrNoVmlinux = errors.New("no vmlinux found in kernel image")

// maxVmlinux bounds what a decompressor may produce, so that a corrupt
// image cannot fill memory.
const maxVmlinux = 1 << 30

type codec struct {
	name  string
	magic []byte
	open  func(io.Reader) (io.Reader, error)
}

// codecs are the compressions Debian's x86 kernels use (6.1: LZ4, 6.12:
// zstd) and the older common ones, as scripts/extract-vmlinux tries them.
var codecs = []codec{
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, func(r io.Reader) (io.Reader, error) {
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}},
	// The kernel's LZ4 is the legacy frame format.
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, func(r io.Reader) (io.Reader, error) { return lz4.NewReader(r), nil }},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, func(r io.Reader) (io.Reader, error) {
		return xz.ReaderConfig{SingleStream: true}.NewReader(r)
	}},
	{"gzip", []byte{0x1f, 0x8b, 0x08}, func(r io.Reader) (io.Reader, error) {
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		z.Multistream(false)
		return z, nil
	}},
}

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage
// (vmlinuz): like the kernel's scripts/extract-vmlinux it looks for each
// compression's magic, decompresses from there and keeps the first result
// that is a complete x86-64 ELF file. Booting that ELF directly (PVH) skips
// the decompressor, which is slow under TCG. An image that already is an
// ELF file is returned as it is.
func ExtractVmlinux(image []byte) ([]byte, string, error) {
	if checkELF(image) == nil {
		return image, "none", nil
	}
	var tried []error
	for _, c := range codecs {
		for off := 0; ; {
			i := bytes.Index(image[off:], c.magic)
			if i < 0 {
				break
			}
			at := off + i
			off = at + 1
			out, err := decompress(c, image[at:])
			if len(out) == 0 {
				continue
			}
			// The stream is followed by the rest of the bzImage, which
			// some decompressors report as an error after the end of
			// the data; a complete ELF file says they got it all.
			if elfErr := checkELF(out); elfErr != nil {
				tried = append(tried, fmt.Errorf("%s at %d: %w (decompressor: %v)", c.name, at, elfErr, err))
				continue
			}
			return out, c.name, nil
		}
	}
	return nil, "", fmt.Errorf("%w (tried %d candidates: %w)", ErrNoVmlinux, len(tried), errors.Join(tried...))
}

func decompress(c codec, data []byte) ([]byte, error) {
	r, err := c.open(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	_, err = io.Copy(&out, io.LimitReader(r, maxVmlinux))
	if cl, ok := r.(io.Closer); ok {
		cl.Close()
	}
	return out.Bytes(), err
}

// checkELF accepts a complete x86-64 ELF executable: every segment and
// section lies inside the data, so a truncated decompression is refused.
func checkELF(data []byte) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return errors.New("not ELF")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return fmt.Errorf("ELF %v %v, want an x86-64 executable", f.Machine, f.Type)
	}
	size := uint64(len(data))
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
		}
		if p.Off+p.Filesz > size {
			return fmt.Errorf("segment at %#x+%#x beyond the %d bytes", p.Off, p.Filesz, size)
		}
	}
	if loads == 0 {
		return errors.New("ELF has no loadable segment")
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && s.Offset+s.Size > size {
			return fmt.Errorf("section %s beyond the %d bytes", s.Name, size)
		}
	}
	return nil
}

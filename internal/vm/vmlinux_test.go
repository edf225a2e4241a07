package vm

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// fakeELF is a minimal x86-64 executable: a header, one PT_LOAD segment
// covering the file, and size bytes of pseudo-random "code".
func fakeELF(t *testing.T, size int) []byte {
	t.Helper()
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+phsize+size)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 1)               // PT_LOAD
	le.PutUint64(ph[32:], uint64(len(b))) // filesz
	le.PutUint64(ph[40:], uint64(len(b))) // memsz
	r := rand.New(rand.NewPCG(1, 2))
	for i := ehsize + phsize; i < len(b); i++ {
		// Compressible, like code, but not trivially.
		b[i] = byte(r.IntN(16))
	}
	return b
}

func compress(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch name {
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	case "lz4":
		lw := lz4.NewWriter(&buf)
		err = lw.Apply(lz4.LegacyOption(true))
		w = lw
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "gzip":
		w = gzip.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bzImage wraps a compressed kernel as the real one does: setup code and
// decompressor before it, more data after it.
func bzImage(payload []byte) []byte {
	img := bytes.Repeat([]byte{0x90, 0xeb, 0x00, 0x55}, 4096)
	// A false start: a magic not followed by a stream.
	img = append(img, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x01, 0x02)
	img = append(img, payload...)
	return append(img, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70)
}

func TestExtractVmlinux(t *testing.T) {
	elf := fakeELF(t, 1<<20)
	for _, name := range []string{"zstd", "lz4", "xz", "gzip"} {
		t.Run(name, func(t *testing.T) {
			out, codec, err := ExtractVmlinux(bzImage(compress(t, name, elf)))
			if err != nil {
				t.Fatal(err)
			}
			if codec != name || !bytes.Equal(out, elf) {
				t.Errorf("got %d bytes via %s, want the %d-byte ELF via %s", len(out), codec, len(elf), name)
			}
		})
	}
	t.Run("already ELF", func(t *testing.T) {
		if out, codec, err := ExtractVmlinux(elf); err != nil || codec != "none" || !bytes.Equal(out, elf) {
			t.Errorf("got %d bytes via %q, %v", len(out), codec, err)
		}
	})
}

func TestExtractVmlinuxRefusesTruncatedOrForeign(t *testing.T) {
	elf := fakeELF(t, 1<<20)
	z := compress(t, "zstd", elf)
	truncated := z[:len(z)/2]
	if _, _, err := ExtractVmlinux(bzImage(truncated)); !errors.Is(err, ErrNoVmlinux) {
		t.Errorf("truncated stream: %v, want ErrNoVmlinux", err)
	}
	notELF := bytes.Repeat([]byte("not a kernel "), 1000)
	if _, _, err := ExtractVmlinux(bzImage(compress(t, "gzip", notELF))); !errors.Is(err, ErrNoVmlinux) {
		t.Errorf("compressed non-ELF: %v, want ErrNoVmlinux", err)
	}
	// An ELF for another machine is no x86 kernel.
	arm := bytes.Clone(elf)
	binary.LittleEndian.PutUint16(arm[18:], 183) // EM_AARCH64
	if _, _, err := ExtractVmlinux(bzImage(compress(t, "xz", arm))); !errors.Is(err, ErrNoVmlinux) {
		t.Errorf("arm64 ELF: %v, want ErrNoVmlinux", err)
	}
}

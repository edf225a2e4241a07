// Package vm runs socklb's privileged test binaries on other kernels under
// qemu: it fetches Debian's kernel packages with apt into a cache, takes
// the uncompressed vmlinux out of their vmlinuz, packs busybox, the static
// test binaries and the modules they need into an initramfs, boots it
// (TCG, one VM at a time) and reads the tests' output and exit codes back
// from a second serial port. tests/vm is the program around it.
package vm

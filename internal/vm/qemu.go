package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BootOptions describe one VM.
type BootOptions struct {
	// QEMU is the emulator, qemu-system-x86_64 by default.
	QEMU      string
	MemoryMiB int
	CPUs      int
	// Timeout bounds the whole VM, boot to power-off; qemu is killed
	// after it.
	Timeout time.Duration
	// WorkDir receives the initramfs and the two serial logs.
	WorkDir string
	// Progress, if set, gets each test's result line as it arrives.
	Progress io.Writer
}

// Boot runs suite on kernel k in a qemu VM and returns what it reported.
// KVM is not used: TCG with one thread per vCPU works on any host.
func Boot(ctx context.Context, k *Kernel, suite *Suite, opts BootOptions) (*KernelResult, error) {
	if opts.QEMU == "" {
		opts.QEMU = "qemu-system-x86_64"
	}
	res := &KernelResult{
		Name: k.Name, Release: k.Release,
		How: fmt.Sprintf("qemu TCG, %d vCPUs, %d MiB", opts.CPUs, opts.MemoryMiB),
	}
	initrd := filepath.Join(opts.WorkDir, "initramfs-"+k.Release+".cpio.zst")
	if err := suite.WriteInitramfs(initrd, k); err != nil {
		return nil, fmt.Errorf("initramfs for %s: %w", k.Release, err)
	}
	console := filepath.Join(opts.WorkDir, "console-"+k.Release+".log")
	results := filepath.Join(opts.WorkDir, "results-"+k.Release+".log")
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", fmt.Sprint(opts.CPUs), "-m", fmt.Sprint(opts.MemoryMiB),
		"-nodefaults", "-display", "none", "-nic", "none", "-no-reboot",
		"-serial", "file:" + console, // ttyS0: the kernel's console
		"-serial", "file:" + results, // ttyS1: test output and exit codes
		"-kernel", k.Vmlinux(), "-initrd", initrd,
		// panic=-1 reboots at once on a panic, which -no-reboot turns
		// into qemu exiting.
		"-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
	}
	vmCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(vmCtx, opts.QEMU, args...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.QEMU, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	tail := &tailer{path: results, w: opts.Progress, prefix: k.Name}
	var waitErr error
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case waitErr = <-waited:
			break loop
		case <-tick.C:
			tail.poll()
			if res.Boot == 0 && tail.sawKernel {
				res.Boot = time.Since(start)
			}
		}
	}
	res.Wall = time.Since(start)
	tail.poll()
	data, err := os.ReadFile(results)
	if err != nil {
		return nil, fmt.Errorf("read results port: %w", err)
	}
	g := parseGuestOutput(data)
	if g.release != "" {
		res.Release = g.release
	}
	res.Problems = append(res.Problems, g.problems...)
	switch {
	case ctx.Err() != nil:
		// The caller's deadline or cancel, not the VM's own timeout.
		return nil, ctx.Err()
	case errors.Is(vmCtx.Err(), context.DeadlineExceeded):
		res.Problems = append(res.Problems, fmt.Sprintf("VM timed out after %s", opts.Timeout))
	case waitErr != nil:
		res.Problems = append(res.Problems, fmt.Sprintf("qemu: %v: %s", waitErr, strings.TrimSpace(qout.String())))
	case !g.done:
		res.Problems = append(res.Problems, "the guest stopped before the suite finished (kernel panic or crash: see the console)")
	}
	for _, p := range g.packages {
		if p.ExitCode == -1 {
			res.Problems = append(res.Problems, fmt.Sprintf("%s did not finish", p.ImportPath))
		}
		tests, err := Test2JSON(ctx, p.Raw)
		if err != nil {
			return nil, err
		}
		p.Tests = tests
		res.Packages = append(res.Packages, p)
	}
	if len(res.Packages) != len(suite.Packages) && g.done {
		res.Problems = append(res.Problems, fmt.Sprintf("%d of %d packages reported", len(res.Packages), len(suite.Packages)))
	}
	if res.Failed() {
		res.Console = lastLines(console, 40)
	}
	res.SkipMismatches = suite.CheckSkips(res, suite.ExpectedSkips[k.Name], true)
	return res, nil
}

// tailer follows the results file while qemu writes it and passes test
// result lines on.
type tailer struct {
	path, prefix string
	w            io.Writer
	off          int64
	partial      []byte
	sawKernel    bool
}

func (t *tailer) poll() {
	f, err := os.Open(t.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return
	}
	buf, err := io.ReadAll(f)
	if err != nil || len(buf) == 0 {
		return
	}
	t.off += int64(len(buf))
	buf = append(t.partial, buf...)
	last := bytes.LastIndexByte(buf, '\n')
	if last < 0 {
		t.partial = buf
		return
	}
	t.partial = append([]byte(nil), buf[last+1:]...)
	for line := range bytes.Lines(buf[:last+1]) {
		s := strings.TrimRight(strings.TrimLeft(string(line), "\x16"), "\n")
		if m, ok := strings.CutPrefix(s, marker+" "); ok {
			f := strings.Fields(m)
			switch {
			case len(f) == 2 && f[0] == "kernel":
				t.sawKernel = true
				s = "booted " + f[1]
			case len(f) == 2 && f[0] == "begin":
				s = "=== " + f[1]
			case len(f) == 3 && f[0] == "end":
				s = "=== " + f[1] + " exited " + f[2]
			case len(f) > 0 && f[0] == "problem":
				s = "PROBLEM: " + strings.Join(f[1:], " ")
			case len(f) == 1 && f[0] == "done":
				s = "suite done, powering off"
			}
		} else if trimmed := strings.TrimSpace(s); !strings.HasPrefix(trimmed, "--- ") && !strings.HasPrefix(s, "panic:") {
			continue
		}
		if t.w != nil {
			fmt.Fprintf(t.w, "[%s] %s\n", t.prefix, s)
		}
	}
}

// lastLines is the end of a log, for the report of a failed VM.
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(data), "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

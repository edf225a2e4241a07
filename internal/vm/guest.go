package vm

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The environment the test binaries read; the names are those of
// testagent.AgentBinEnv, sandbox.AllowMissingFeaturesEnv and
// sandbox.EmulatedEnv (a test checks), spelled out so that this program does not link the testing
// helpers. Every VM sets allowMissingFeaturesEnv, so a test there skips
// on a feature its kernel lacks instead of failing; each skip is then
// checked against that kernel's list (Suite.ExpectedSkips), so a probe
// that broke still fails the run. Every VM also sets emulatedEnv: they
// run under qemu's TCG, and latency bounds there are wider.
const (
	agentBinEnv             = "SOCKLB_AGENT_BIN"
	allowMissingFeaturesEnv = "SOCKLB_ALLOW_MISSING_FEATURES"
	emulatedEnv             = "SOCKLB_EMULATED"
)

// Package is one test binary of the suite.
type Package struct {
	// ImportPath names it in results.
	ImportPath string
	// Rel is its directory relative to the module root: the working
	// directory the test runs in (created empty in the guest).
	Rel string
	// Dir is that directory on the host, for native runs.
	Dir string
	// Binary is the static test binary (go test -c) on the host.
	Binary string
}

// Suite is what runs on every kernel: the same binaries, flags and
// environment in each VM and natively.
type Suite struct {
	Packages []Package
	// Agent is the static agent binary the tests start.
	Agent string
	// Run selects the tests (-test.run).
	Run string
	// Timeout bounds each package (-test.timeout): a hung test panics
	// with every goroutine's stack instead of using up the VM's time.
	Timeout time.Duration
	// Busybox is a static busybox: the guest's init, shell and the small
	// commands the tests run (sleep, true).
	Busybox string
	// Tools are host programs the tests run that busybox lacks or has in
	// another form (bpftool, ip -brief, setpriv); they are copied with
	// their shared libraries.
	Tools []string
	// GuestSkip names tests that cannot run in a VM, with the reason:
	// they are left out there (-test.skip) and still run natively.
	GuestSkip map[string]string
	// ExpectedSkips lists, per kernel (KernelResult.Name: "6.1",
	// "host"), the tests that kernel is known to skip. Any other skip,
	// and a listed one that did not happen, fails that kernel
	// (CheckSkips); a kernel without a list may skip nothing.
	ExpectedSkips map[string][]ExpectedSkip
}

// guest paths
const (
	guestBin     = "/socklb/bin"
	guestSrc     = "/socklb/src"
	guestModules = "/socklb/modules"
	guestTools   = "/usr/local/bin"
	// marker starts every line init writes itself on the results port.
	marker = "@@socklb-vm"
)

// testArgs are the flags of every test binary; in a guest the tests of
// GuestSkip are left out.
func (s *Suite) testArgs(guest bool) []string {
	args := []string{
		"-test.run=" + s.Run,
		// test2json framing: the host turns the output into events
		// with `go tool test2json`, unambiguously.
		"-test.v=test2json",
		"-test.count=1",
		"-test.timeout=" + s.Timeout.String(),
	}
	if guest && len(s.GuestSkip) > 0 {
		names := slices.Sorted(maps.Keys(s.GuestSkip))
		for i, n := range names {
			names[i] = regexp.QuoteMeta(n)
		}
		args = append(args, "-test.skip=^("+strings.Join(names, "|")+")$")
	}
	return args
}

func binaryName(p Package) string {
	return strings.ReplaceAll(p.Rel, "/", "_") + ".test"
}

// WriteInitramfs packs the suite, busybox as init and the kernel's
// modules into a compressed initramfs at dst.
func (s *Suite) WriteInitramfs(dst string, k *Kernel) (err error) {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	a, err := NewInitramfs(f)
	if err != nil {
		return err
	}
	if err := s.fill(a, k); err != nil {
		return err
	}
	return a.Close()
}

func (s *Suite) fill(a *Initramfs, k *Kernel) error {
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/root", "/run", "/usr/sbin", "/usr/bin", "/sbin"} {
		if err := a.Dir(d); err != nil {
			return err
		}
	}
	// As on Debian: the sandbox names namespaces under /var/run/netns,
	// iproute2 looks under /run/netns.
	if err := a.Symlink("/var/run", "../run"); err != nil {
		return err
	}
	if err := requireStatic(s.Busybox, "a static busybox (apt-get install busybox-static)"); err != nil {
		return err
	}
	if err := a.CopyFile("/bin/busybox", s.Busybox, 0o755); err != nil {
		return err
	}
	tools := map[string]bool{}
	for _, t := range s.Tools {
		tools[filepath.Base(t)] = true
	}
	applets, err := exec.Command(s.Busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, ap := range strings.Fields(string(applets)) {
		// A host tool of the same name takes the applet's place.
		if ap == "busybox" || tools[ap] {
			continue
		}
		if err := a.Symlink("/bin/"+ap, "busybox"); err != nil {
			return err
		}
	}
	libs := map[string]bool{}
	for _, t := range s.Tools {
		if err := a.CopyFile(path.Join(guestTools, filepath.Base(t)), t, 0o755); err != nil {
			return err
		}
		deps, err := SharedLibraries(t)
		if err != nil {
			return err
		}
		for _, l := range deps {
			if libs[l] {
				continue
			}
			libs[l] = true
			if err := a.CopyFile(l, l, 0o755); err != nil {
				return err
			}
		}
	}
	if err := requireStatic(s.Agent, "a static agent (CGO_ENABLED=0)"); err != nil {
		return err
	}
	if err := a.CopyFile(path.Join(guestBin, "socklb-agent"), s.Agent, 0o755); err != nil {
		return err
	}
	for _, p := range s.Packages {
		if err := requireStatic(p.Binary, "a static test binary (CGO_ENABLED=0)"); err != nil {
			return err
		}
		if err := a.CopyFile(path.Join(guestBin, binaryName(p)), p.Binary, 0o755); err != nil {
			return err
		}
		if err := a.Dir(path.Join(guestSrc, p.Rel)); err != nil {
			return err
		}
	}
	for _, m := range k.Modules {
		if err := a.CopyFile(path.Join(guestModules, m+".ko"), k.ModulePath(m), 0o644); err != nil {
			return err
		}
	}
	return a.File("/init", 0o755, []byte(s.initScript(k)))
}

// initScript is the guest's PID 1: mount what the tests need, load the
// modules, run each package with its output on the second serial port
// (ttyS1), each followed by its exit code, then power off.
func (s *Suite) initScript(k *Kernel) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("#!/bin/busybox sh")
	w("# socklb kernel matrix guest (generated by internal/vm).")
	w("export PATH=%s:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp", guestTools)
	w("/bin/busybox mount -t proc proc /proc")
	w("mount -t sysfs sysfs /sys")
	w("mount -t devtmpfs devtmpfs /dev")
	w("mkdir -p /sys/fs/cgroup /sys/fs/bpf")
	w("mount -t cgroup2 cgroup2 /sys/fs/cgroup")
	w("mount -t bpf bpf /sys/fs/bpf")
	w("ip link set lo up")
	// Raw: no \n → \r\n, no echo; the host reads the bytes as written.
	w("stty -F /dev/ttyS1 raw -echo")
	w("exec 3>/dev/ttyS1")
	w("say() { echo %q \"$@\" >&3; }", marker)
	w("say kernel \"$(uname -r)\"")
	for _, m := range k.Modules {
		w("insmod %s/%s.ko || say problem \"insmod %s failed\"", guestModules, m, m)
	}
	// A host has a default route; tests look at the host namespace's
	// routes (sandbox's isolation test). The dummy device is the only
	// one, and the VM has no network card: nothing leaves. The addresses
	// are from TEST-NET-1 (RFC 5737).
	w("ip link add host0 type dummy && ip link set host0 up && ip addr add 192.0.2.1/24 dev host0 && ip route add default via 192.0.2.254 || say problem \"host0 setup failed\"")
	env := fmt.Sprintf("%s=%s/socklb-agent %s=1 %s=1", agentBinEnv, guestBin, allowMissingFeaturesEnv, emulatedEnv)
	args := make([]string, 0, 4)
	for _, a := range s.testArgs(true) {
		args = append(args, shellQuote(a))
	}
	for _, p := range s.Packages {
		w("say begin %s", p.ImportPath)
		w("(cd %s && env %s %s/%s %s) >&3 2>&1", shellQuote(path.Join(guestSrc, p.Rel)), env, guestBin, binaryName(p), strings.Join(args, " "))
		w("say end %s $?", p.ImportPath)
	}
	w("say done")
	w("sync")
	w("poweroff -f")
	w("reboot -f")
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// HostTools returns the path of each named program found on the host,
// and the names not found.
func HostTools(names ...string) (found, missing []string) {
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			missing = append(missing, n)
			continue
		}
		found = append(found, p)
	}
	slices.Sort(missing)
	return found, missing
}

// requireStatic fails unless path is a statically linked ELF file: the
// guest has no dynamic loader for it. want says what path should be.
func requireStatic(path, want string) error {
	static, err := IsStatic(path)
	if err != nil {
		return fmt.Errorf("%s must be %s: %w", path, want, err)
	}
	if !static {
		return fmt.Errorf("%s must be %s: it is dynamically linked", path, want)
	}
	return nil
}

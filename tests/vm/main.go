// Command vm runs socklb's privileged tests on other kernels: Debian's 6.1
// and 6.12 (the cloud flavours, fetched with apt into a cache) each booted
// under qemu, one after another, and the host's own kernel natively. It
// prints one row per kernel (passed, failed, skipped with the reasons,
// wall time) and fails when any kernel does. Each kernel has its own list
// of the tests it is known to skip (expectedSkips, skips.go): any other
// skip fails that kernel, and so does a listed skip that did not happen.
// `make vm-test` runs it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/socklb/socklb/internal/vm"
)

// guestSkip are the tests that cannot run in a VM, and why; they run
// natively, and the report lists them.
var guestSkip = map[string]string{
	"TestPrivilegedAgentUpgradeFromOlderMapLayouts":       "builds the v1 and v2 agents from the repository's history with git and go, which the VM has not",
	"TestPrivilegedFinding8DemoFailsLoudlyWithoutBpftool": "builds the demo with go, which the VM has not (and no kernel feature is involved)",
}

// defaultKernels are the kernels --kernels boots unless told otherwise;
// each has its list in expectedSkips.
const defaultKernels = "6.1=linux-image-cloud-amd64,6.12=linux-image-6.12-cloud-amd64"

// errFailed: a kernel failed; the report already says how.
var errFailed = errors.New("the suite failed on at least one kernel")

func main() {
	if err := run(); err != nil {
		if !errors.Is(err, errFailed) {
			fmt.Fprintln(os.Stderr, "vm-test:", err)
		}
		os.Exit(1)
	}
}

// kernelFlag is one NAME=META-PACKAGE pair of --kernels.
type kernelFlag struct{ name, meta string }

func parseKernels(s string) ([]kernelFlag, error) {
	var out []kernelFlag
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		name, meta, ok := strings.Cut(kv, "=")
		if !ok || name == "" || meta == "" {
			return nil, fmt.Errorf("--kernels: %q is not NAME=PACKAGE", kv)
		}
		out = append(out, kernelFlag{name, meta})
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func defaultCache() string {
	if d := os.Getenv("SOCKLB_VM_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "socklb-vm")
	}
	return filepath.Join(os.TempDir(), "socklb-vm")
}

func run() error {
	var (
		kernels = flag.String("kernels", defaultKernels,
			"kernels to boot, NAME=PACKAGE: Debian's image package or the meta-package that points at it; each NAME needs a list of expected skips in tests/vm/skips.go")
		host        = flag.Bool("host", true, "also run the suite natively on the host's kernel")
		agent       = flag.String("agent", "", "static agent binary (make build); built here when empty")
		cache       = flag.String("cache", defaultCache(), "where fetched kernels are kept ($SOCKLB_VM_CACHE)")
		memory      = flag.Int("memory", 512, "guest memory in MiB (the unpacked initramfs holds about 85 of it; at 256 the 6.12 guest OOM-killed agents)")
		cpus        = flag.Int("cpus", 2, "guest vCPUs")
		vmTimeout   = flag.Duration("timeout", 15*time.Minute, "hard limit for each VM, boot to power-off")
		testTimeout = flag.Duration("test-timeout", 8*time.Minute, "limit for each test binary (-test.timeout)")
		runRE       = flag.String("run", "^TestPrivileged", "tests to run (-test.run)")
		modules     = flag.String("modules", "veth,dummy",
			"kernel modules to load in the guest, which Debian builds as modules: veth for sandbox.Wire, dummy for the guest's host0")
		tools = flag.String("tools", "bpftool,ip,nsenter,setpriv",
			"host programs the tests run, copied into the guest with their libraries (busybox's ip and nsenter lack options the tests use)")
		exclude = flag.String("exclude", "tests/e2e/,tests/bench/",
			"package directories left out: the end-to-end suite needs a control plane and more memory than a VM gets, the benchmarks need kube-proxy")
		keep = flag.Bool("keep", false, "keep the work directory (initramfs, serial logs)")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ks, err := parseKernels(*kernels)
	if err != nil {
		return err
	}
	if err := checkSkipLists(ks, *host); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if len(ks) > 0 {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			return fmt.Errorf("qemu-system-x86_64 is missing (make deps-vm, or apt-get install qemu-system-x86): %w", err)
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox is missing (apt-get install busybox-static): %w", err)
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "socklb-vm-")
	if err != nil {
		return err
	}
	if *keep {
		log.Info("keeping the work directory", "dir", work)
	} else {
		defer os.RemoveAll(work)
	}

	pkgs, err := privilegedPackages(ctx, root, splitList(*exclude))
	if err != nil {
		return err
	}
	suite := &vm.Suite{Run: *runRE, Timeout: *testTimeout, Busybox: busybox, GuestSkip: guestSkip, ExpectedSkips: expectedSkips}
	for _, p := range pkgs {
		p.Binary = filepath.Join(work, strings.ReplaceAll(p.Rel, "/", "_")+".test")
		log.Info("building test binary", "package", p.ImportPath)
		// make lint vets these packages; go test's own vet pass would
		// redo it over their dependencies.
		if err := goCmd(ctx, root, "test", "-c", "-vet=off", "-ldflags=-s -w", "-o", p.Binary, p.ImportPath); err != nil {
			return err
		}
		suite.Packages = append(suite.Packages, p)
	}
	if suite.Agent = *agent; suite.Agent == "" {
		suite.Agent = filepath.Join(work, "socklb-agent")
		log.Info("building the agent")
		if err := goCmd(ctx, root, "build", "-trimpath", "-ldflags=-s -w", "-o", suite.Agent, "./cmd/agent"); err != nil {
			return err
		}
	} else if suite.Agent, err = filepath.Abs(suite.Agent); err != nil {
		return err
	}
	found, missing := vm.HostTools(splitList(*tools)...)
	if len(missing) > 0 {
		log.Warn("host programs missing; the tests that run them will fail in the VMs", "missing", missing)
	}
	suite.Tools = found

	var results []*vm.KernelResult
	for _, k := range ks {
		kern, err := fetchKernel(ctx, k, vm.FetchOptions{CacheDir: *cache, Modules: splitList(*modules), Logger: log})
		if err != nil {
			return err
		}
		log.Info("booting", "kernel", k.name, "package", kern.Package, "version", kern.Version, "release", kern.Release,
			"memory_mib", *memory, "cpus", *cpus)
		res, err := vm.Boot(ctx, kern, suite, vm.BootOptions{
			MemoryMiB: *memory, CPUs: *cpus, Timeout: *vmTimeout, WorkDir: work, Progress: os.Stdout,
		})
		if err != nil {
			return err
		}
		logResult(log, res)
		results = append(results, res)
	}
	if *host {
		log.Info("running natively on the host kernel")
		res, err := vm.RunNative(ctx, suite, os.Stdout)
		if err != nil {
			return err
		}
		logResult(log, res)
		results = append(results, res)
	}
	w := bufio.NewWriter(os.Stdout)
	vm.WriteReport(w, suite, results)
	if err := w.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if r.Failed() {
			return errFailed
		}
	}
	return nil
}

// fetchKernel resolves and fetches one kernel; when that fails it updates
// apt's index once and tries again, since a stale index names versions
// the archive no longer has.
func fetchKernel(ctx context.Context, k kernelFlag, opts vm.FetchOptions) (*vm.Kernel, error) {
	for attempt := 0; ; attempt++ {
		pkg, version, err := vm.ResolvePackage(ctx, k.meta)
		if err == nil {
			var kern *vm.Kernel
			if kern, err = vm.Fetch(ctx, k.name, pkg, version, opts); err == nil {
				return kern, nil
			}
		}
		if attempt > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.name, err)
		}
		opts.Logger.Warn("fetching the kernel failed; updating apt's index and trying again", "kernel", k.name, "error", err)
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return nil, errors.Join(fmt.Errorf("kernel %s: %w", k.name, err), fmt.Errorf("apt-get update: %w: %s", uerr, out))
		}
	}
}

func logResult(log *slog.Logger, r *vm.KernelResult) {
	p, f, s := r.Counts()
	log.Info("kernel done", "kernel", r.Name, "release", r.Release, "wall", r.Wall.Round(time.Second),
		"passed", p, "failed", f, "skipped", s, "skip_mismatches", len(r.SkipMismatches), "ok", !r.Failed())
}

func goCmd(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	// Static binaries: the guest has no C library for them.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("go list -m: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// privilegedPackages finds the module's packages with TestPrivileged*
// tests, except those under the excluded directories: every new
// privileged package joins the matrix by itself.
func privilegedPackages(ctx context.Context, root string, exclude []string) ([]vm.Package, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{join .TestGoFiles \",\"}},{{join .XTestGoFiles \",\"}}", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	var pkgs []vm.Package
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) != 3 {
			continue
		}
		rel, err := filepath.Rel(root, f[1])
		if err != nil {
			return nil, err
		}
		rel = filepath.ToSlash(rel)
		if excluded(rel, exclude) {
			continue
		}
		has, err := hasPrivilegedTests(f[1], splitList(f[2]))
		if err != nil {
			return nil, err
		}
		if has {
			pkgs = append(pkgs, vm.Package{ImportPath: f[0], Rel: rel, Dir: f[1]})
		}
	}
	if len(pkgs) == 0 {
		return nil, errors.New("no package with TestPrivileged* tests found")
	}
	return pkgs, nil
}

func excluded(rel string, exclude []string) bool {
	for _, e := range exclude {
		if rel+"/" == e || strings.HasPrefix(rel+"/", e) {
			return true
		}
	}
	return false
}

func hasPrivilegedTests(dir string, files []string) (bool, error) {
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return false, err
		}
		if strings.Contains(string(data), "\nfunc TestPrivileged") {
			return true, nil
		}
	}
	return false, nil
}

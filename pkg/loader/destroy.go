package loader

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/pkg/maps"
)

type iterator struct {
	name, section string
	link          *link.Iter
}

// ErrNoSockDestroy: the kernel cannot destroy sockets from BPF (< 6.5).
var ErrNoSockDestroy = errors.New("socket destruction not supported by this kernel")

// DestroyOptions say which sockets DestroySockets closes.
type DestroyOptions struct {
	// TCP also destroys TCP sockets; UDP sockets always are, so that
	// connected UDP clients (DNS) do not stay pinned to a dead backend.
	TCP bool
	// NetnsPaths, if set, are the only namespaces visited; by default
	// every namespace of every process and every named one is.
	NetnsPaths []string
	Logger     *slog.Logger
}

// DestroySockets closes the connected sockets of every departure, in
// every network namespace (an iterator only walks the sockets of the
// namespace it is read from). It returns how many it closed.
func (d *Datapath) DestroySockets(gone []maps.Departure, opts DestroyOptions) (int, error) {
	if len(gone) == 0 {
		return 0, nil
	}
	var iters []iterator
	for _, it := range d.iters {
		if it.section == "iter/udp" || (opts.TCP && it.section == "iter/tcp") {
			iters = append(iters, it)
		}
	}
	if len(iters) == 0 {
		return 0, ErrNoSockDestroy
	}
	m := d.Maps.SocklbGoneV3
	mark := byte(1)
	for _, g := range gone {
		k := socklb.BpfDeparture{RevNatId: uint32(g.RevNATID), BackendId: uint32(g.Backend)}
		if err := m.Update(&k, &mark, ebpf.UpdateAny); err != nil {
			return 0, fmt.Errorf("mark departed backend: %w", err)
		}
	}
	defer func() {
		for _, g := range gone {
			k := socklb.BpfDeparture{RevNatId: uint32(g.RevNATID), BackendId: uint32(g.Backend)}
			_ = m.Delete(&k)
		}
	}()
	paths := opts.NetnsPaths
	if paths == nil {
		if haveCapability(unix.CAP_SYS_ADMIN) {
			paths = allNetns()
		} else {
			// Entering another namespace needs CAP_SYS_ADMIN; our own
			// needs no setns.
			paths = []string{"/proc/self/ns/net"}
		}
	}
	var (
		total int
		errs  []error
	)
	for _, p := range paths {
		n, err := runIn(p, iters)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// allNetns lists one path per distinct network namespace: those of all
// processes and those bind-mounted under /var/run/netns.
func allNetns() []string {
	seen := map[[2]uint64]bool{}
	var out []string
	add := func(p string) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil {
			return
		}
		k := [2]uint64{st.Dev, st.Ino}
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	add("/proc/self/ns/net")
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if e.IsDir() && strings.Trim(e.Name(), "0123456789") == "" {
			add(filepath.Join("/proc", e.Name(), "ns/net"))
		}
	}
	named, _ := os.ReadDir("/var/run/netns")
	for _, e := range named {
		add(filepath.Join("/var/run/netns", e.Name()))
	}
	return out
}

// runIn reads each iterator from inside the namespace at path, on a
// thread of its own that is put back, or discarded if it cannot be.
func runIn(path string, iters []iterator) (int, error) {
	target, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil // the process went away meanwhile
		}
		return 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if sameNetns(target) {
		return readIters(path, iters)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{0, fmt.Errorf("open own netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			if errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("%w (needs CAP_SYS_ADMIN)", err)
			}
			done <- result{0, fmt.Errorf("enter netns %s: %w", path, err)}
			return
		}
		var r result
		r.n, r.err = readIters(path, iters)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} // else: the goroutine ends locked and Go retires the thread
		done <- r
	}()
	r := <-done
	return r.n, r.err
}

// readIters reads every iterator in the calling thread's namespace, path.
func readIters(path string, iters []iterator) (int, error) {
	var (
		total int
		errs  []error
	)
	for _, it := range iters {
		n, err := readIter(it)
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s in %s: %w", it.name, path, err))
		}
	}
	return total, errors.Join(errs...)
}

// sameNetns reports whether the namespace f refers to is the process's
// own, which needs no setns (and so no CAP_SYS_ADMIN) to be read from.
func sameNetns(f *os.File) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat("/proc/self/ns/net", &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func readIter(it iterator) (int, error) {
	rc, err := it.link.Open()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	return int(n), err
}

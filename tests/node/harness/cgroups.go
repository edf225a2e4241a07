package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
)

// kubeletControllers are the v1 controllers whose hierarchies kubelet
// checks for its cgroupRoot before it starts (cgroupV1impl.Validate, plus
// hugetlb when mounted); "systemd" is the name=systemd hierarchy.
var kubeletControllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "systemd"}

// hierarchy is one mounted cgroup hierarchy: a v1 controller set (or a
// named one such as name=systemd) or the cgroup2 tree.
type hierarchy struct {
	mount       string   // e.g. /sys/fs/cgroup/cpu
	controllers []string // e.g. [cpu]; [systemd] for name=systemd; nil for cgroup2
	v2          bool
}

// cgroupHierarchies lists the cgroup hierarchies mounted in this mount
// namespace, each once (the first mount of its root), in mount order.
func cgroupHierarchies() ([]hierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseCgroupMounts(f)
}

// parseCgroupMounts reads mountinfo lines and keeps the mounts of whole
// cgroup hierarchies (root "/"), one per superblock.
func parseCgroupMounts(r io.Reader) ([]hierarchy, error) {
	var hs []hierarchy
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		dev, root, mount := f[2], f[3], sandbox.UnescapeMount(f[4])
		if root != "/" || seen[dev] {
			continue
		}
		seen[dev] = true
		h := hierarchy{mount: mount, v2: g[0] == "cgroup2"}
		if !h.v2 {
			for _, opt := range strings.Split(g[2], ",") {
				if name, ok := strings.CutPrefix(opt, "name="); ok {
					h.controllers = append(h.controllers, name)
				} else if isV1Controller(opt) {
					h.controllers = append(h.controllers, opt)
				}
			}
		}
		hs = append(hs, h)
	}
	return hs, sc.Err()
}

// isV1Controller tells a controller name from the other super options of
// a v1 cgroup mount (rw, noprefix, clone_children, xattr, release_agent=).
func isV1Controller(opt string) bool {
	switch opt {
	case "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
		"blkio", "perf_event", "hugetlb", "pids", "rdma", "misc":
		return true
	}
	return false
}

// missingKubeletHierarchies names the controllers of kubeletControllers
// that no v1 hierarchy has. A host with cgroup2 only has none of them,
// and needs none.
func missingKubeletHierarchies(hs []hierarchy) []string {
	have := map[string]bool{}
	v1 := false
	for _, h := range hs {
		if !h.v2 {
			v1 = true
			for _, c := range h.controllers {
				have[c] = true
			}
		}
	}
	if !v1 {
		return nil
	}
	var missing []string
	for _, c := range kubeletControllers {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	return missing
}

// checkCgroupRootName accepts only the names this package makes:
// "socklb-node-" and a suffix, one path element, so that no cleanup can
// ever reach a hierarchy's root or another tree.
func checkCgroupRootName(name string) error {
	if !strings.HasPrefix(name, "socklb-node-") || len(name) == len("socklb-node-") ||
		strings.ContainsAny(name, "/\x00") || name != filepath.Clean(name) {
		return fmt.Errorf("cgroup root %q: not a socklb-node-<suffix> name", name)
	}
	return nil
}

// createCgroupRoot makes name in every hierarchy, as kubelet wants its
// cgroupRoot to exist before it starts; v1 cpuset children get the
// parent's cpus and mems (a cpuset without them takes no process). It
// returns the directories it made, and on error removes them again. It
// refuses a name that exists anywhere already.
func createCgroupRoot(hs []hierarchy, name string) ([]string, error) {
	if err := checkCgroupRootName(name); err != nil {
		return nil, err
	}
	var made []string
	fail := func(err error) ([]string, error) {
		return nil, errors.Join(err, removeCgroupDirs(made, 5*time.Second))
	}
	for _, h := range hs {
		dir := filepath.Join(h.mount, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fail(fmt.Errorf("create cgroup %s: %w", dir, err))
		}
		made = append(made, dir)
		if !h.v2 && slices.Contains(h.controllers, "cpuset") {
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h.mount, file))
				if err != nil {
					return fail(err)
				}
				if err := os.WriteFile(filepath.Join(dir, file), v, 0o644); err != nil {
					return fail(fmt.Errorf("cgroup %s: write %s: %w", dir, file, err))
				}
			}
		}
	}
	return made, nil
}

// removeCgroupDirs removes each directory tree depth-first (children
// first: a cgroup with children cannot be removed). A cgroup whose last
// process is still exiting is busy for a moment, so each tree is retried
// until timeout. Missing trees are fine.
func removeCgroupDirs(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	for _, dir := range dirs {
		for {
			err := rmdirTree(dir)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w%s", dir, err, cgroupProcsHint(dir)))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// rmdirTree removes dir and every directory below it, deepest first. A
// cgroup directory holds only the kernel's control files, which go with
// it; only directories are ever removed.
func rmdirTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := rmdirTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("rmdir %s: %w", dir, err)
	}
	return nil
}

// cgroupProcsHint names the processes still in a cgroup tree, for the
// error that it could not be removed.
func cgroupProcsHint(dir string) string {
	var pids []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		if data, err := os.ReadFile(path); err == nil {
			pids = append(pids, strings.Fields(string(data))...)
		}
		return nil
	})
	if len(pids) == 0 {
		return ""
	}
	return fmt.Sprintf(" (processes still inside: %s)", strings.Join(pids, " "))
}

// existingDirs returns those of dirs that exist.
func existingDirs(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

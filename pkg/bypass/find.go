package bypass

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/netnsid"
)

// maxPodDepth bounds the search for pod cgroups below the root: kubelet
// puts them at kubepods/pod<uid> or kubepods/<qos>/pod<uid> (cgroupfs),
// or kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice
// (systemd), below its cgroupRoot, which may itself be nested.
const maxPodDepth = 6

// finder finds the network namespace of a pod through its cgroup: the
// kubelet names the pod's cgroup after its UID, and every process of the
// pod (the sandbox's pause process first) lives in that cgroup's subtree
// and in the pod's network namespace.
type finder struct {
	root string // the cgroup2 directory the pod cgroups are under
	self uint64 // the agent's own netns cookie (the node's): never a pod's
	// init is the netns cookie of PID 1 (the node's init, with hostPID):
	// never a pod's either, also for an agent outside the node's
	// namespace; 0 when it cannot be read.
	init uint64
	// cookieOf reads the cookie of /proc/PID/ns/net, linkOf what the
	// link reads ("net:[inode]"), startOf when the process started; a
	// test replaces them.
	cookieOf func(pid int) (uint64, error)
	linkOf   func(pid int) (string, error)
	startOf  func(pid int) (uint64, bool)
}

func newFinder(root string) (*finder, error) {
	self, err := netnsid.Current()
	if err != nil {
		return nil, fmt.Errorf("the agent's own network namespace: %w", err)
	}
	init, _ := netnsid.Cookie("/proc/1/ns/net")
	return &finder{root: root, self: self, init: init,
		cookieOf: func(pid int) (uint64, error) { return netnsid.Cookie(nsPath(pid)) },
		linkOf:   func(pid int) (string, error) { return os.Readlink(nsPath(pid)) },
		startOf:  startTime,
	}, nil
}

func nsPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/ns/net" }

// podDirs finds the pod cgroups below the root, by UID.
func (f *finder) podDirs() (map[types.UID]string, error) {
	out := make(map[types.UID]string)
	rootDepth := strings.Count(filepath.Clean(f.root), string(filepath.Separator))
	err := filepath.WalkDir(f.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == f.root {
				return err
			}
			return nil // a cgroup removed during the walk
		}
		if !d.IsDir() {
			return nil
		}
		if uid, ok := podUID(d.Name()); ok {
			out[uid] = path
			return fs.SkipDir // containers below, no other pods
		}
		if strings.Count(path, string(filepath.Separator))-rootDepth >= maxPodDepth {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look for pod cgroups under %s: %w", f.root, err)
	}
	return out, nil
}

// podUID reads a pod UID from a kubelet cgroup name: "pod<uid>"
// (cgroupfs) or "kubepods[-<qos>]-pod<uid with _ for ->.slice" (systemd).
func podUID(name string) (types.UID, bool) {
	if uid, ok := strings.CutPrefix(name, "pod"); ok && looksLikeUID(uid) {
		return types.UID(uid), true
	}
	if s, ok := strings.CutSuffix(name, ".slice"); ok {
		if i := strings.LastIndex(s, "-pod"); i >= 0 {
			uid := strings.ReplaceAll(s[i+len("-pod"):], "_", "-")
			if looksLikeUID(uid) {
				return types.UID(uid), true
			}
		}
	}
	return "", false
}

// looksLikeUID: 36 characters of hex digits and dashes, as Kubernetes
// writes UIDs.
func looksLikeUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for _, c := range s {
		if c != '-' && (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// errNoProcess: the pod's cgroup has no process in a network namespace of
// its own yet (the sandbox is being created).
var errNoProcess = errors.New("no process of the pod in a network namespace of its own yet")

// errCannotSee: the pod has processes, but the agent cannot read their
// network namespace, and will not by waiting: it lacks a privilege. The
// error says which.
var errCannotSee = errors.New("the agent cannot read the network namespace of the pod's processes")

// maxContainerDepth bounds the walk below a pod's cgroup: the runtime
// puts each container one level down, and a container may nest its own
// cgroups (systemd, Docker in Docker) a few levels more.
const maxContainerDepth = 8

// netnsOf returns the cookie of the pod's network namespace, from the
// processes in the pod cgroup dir. A process still in the node's
// namespace is skipped: the runtime moves its init into the cgroup before
// it enters the pod's namespaces. A container may run processes in
// namespaces of its own (unshare -n; Docker in Docker, whose inner
// containers nest cgroups below it), so each container (each cgroup
// directly below the pod's) votes for the namespace of its first process
// (the earliest started: the container's init, before anything it
// starts), and the pod's is the one most containers vote for, on a tie
// the one whose voter started first: the sandbox's pause starts before
// any container. (Cookies say nothing of age: the kernel hands them out
// in batches per CPU.) A process moved into a pod's cgroup from outside
// would count as its container's first, being older: runtimes start a
// pod's processes inside it, and the node's own namespace is never taken
// (self, init), so on a node only a process moved in from another pod's
// namespace could outvote the sandbox. When no process gives a cookie
// because the agent may not see them (no hostPID: cgroup.procs lists
// them as 0) or may not open their /proc/PID/ns/net (another user's
// process, e.g. the sandbox's pause as 65535, or one holding capabilities
// the agent lacks, needs CAP_SYS_PTRACE), it returns errCannotSee: else the pod would wait
// forever, polled, for a namespace the agent can never read. A pod cgroup
// that is gone is an error wrapping fs.ErrNotExist.
func (f *finder) netnsOf(dir string) (uint64, error) {
	dir = filepath.Clean(dir)
	base := strings.Count(dir, string(filepath.Separator))
	type voter struct {
		cookie uint64
		start  uint64 // clock ticks since boot
		pid    int
	}
	earlier := func(a, b voter) bool { return a.start < b.start || (a.start == b.start && a.pid < b.pid) }
	votes := map[string]voter{}  // container cgroup → its first process's namespace
	known := map[string]uint64{} // namespace link ("net:[inode]") → cookie, read once per walk
	hidden, denied := 0, 0
	var deniedErr error
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			return nil // removed meanwhile
		}
		if !d.IsDir() {
			return nil
		}
		depth := strings.Count(path, string(filepath.Separator)) - base
		if depth > maxContainerDepth {
			return fs.SkipDir
		}
		container := path // the pod's own cgroup votes for itself
		if depth > 0 {
			rel, _ := filepath.Rel(dir, path)
			first, _, _ := strings.Cut(rel, string(filepath.Separator))
			container = filepath.Join(dir, first)
		}
		pids, invisible, err := readPIDs(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil // removed meanwhile
		}
		hidden += invisible
		for _, pid := range pids {
			c, err := f.cookieOfPID(pid, known)
			if errors.Is(err, fs.ErrPermission) {
				denied++
				deniedErr = err
				continue
			}
			if err != nil || c == f.self || c == f.init || c == 0 {
				continue // gone, or not in the pod's namespace yet
			}
			start, ok := f.startOf(pid)
			if !ok {
				continue // gone
			}
			if v, ok := votes[container]; !ok || earlier(voter{c, start, pid}, v) {
				votes[container] = voter{c, start, pid}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("look for the processes of %s: %w", dir, err)
	}
	count := map[uint64]int{}
	first := map[uint64]voter{} // the earliest voter for each namespace
	for _, v := range votes {
		count[v.cookie]++
		if f, ok := first[v.cookie]; !ok || earlier(v, f) {
			first[v.cookie] = v
		}
	}
	var best uint64
	for c, n := range count {
		if best == 0 || n > count[best] || (n == count[best] && earlier(first[c], first[best])) {
			best = c
		}
	}
	switch {
	case best != 0:
		return best, nil
	case denied > 0:
		return 0, fmt.Errorf("%w: %d of its processes: %w (opening /proc/PID/ns/net of a process of another user, "+
			"or of one with capabilities the agent lacks, needs CAP_SYS_PTRACE)", errCannotSee, denied, deniedErr)
	case hidden > 0:
		return 0, fmt.Errorf("%w: none of its processes is in the agent's PID namespace (cgroup.procs lists %d as 0; "+
			"the agent needs hostPID: true)", errCannotSee, hidden)
	}
	return 0, errNoProcess
}

// cookieOfPID reads the cookie of a process's network namespace, once
// per namespace in known (keyed by the nsfs link, unique among the
// namespaces that exist): most processes of a pod share one.
func (f *finder) cookieOfPID(pid int, known map[string]uint64) (uint64, error) {
	link, err := f.linkOf(pid)
	if err != nil {
		return 0, err
	}
	if c, ok := known[link]; ok {
		return c, nil
	}
	c, err := f.cookieOf(pid)
	if err != nil {
		return 0, err
	}
	known[link] = c
	return c, nil
}

// startTime reads when a process started, in clock ticks since boot
// (field 22 of /proc/PID/stat); false when it is gone.
func startTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// and parentheses: the fields after it follow the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 { // fields 3 to 22
		return 0, false
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	return v, err == nil
}

// readPIDs reads a cgroup.procs file: the PIDs, and how many processes
// it lists as 0 (those outside the reader's PID namespace).
func readPIDs(path string) (pids []int, invisible int, err error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		switch {
		case err != nil:
		case pid > 0:
			pids = append(pids, pid)
		case pid == 0:
			invisible++
		}
	}
	return pids, invisible, sc.Err()
}

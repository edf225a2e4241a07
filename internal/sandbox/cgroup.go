package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ErrCgroupRoot is returned for any attempt to use a cgroup2 root (the
// host's, or a cgroup2 mount point) where a child cgroup is required.
var ErrCgroupRoot = errors.New("refusing to use a cgroup2 root")

// Cgroup is a child cgroup of the cgroup2 mount that this package created.
type Cgroup struct {
	path string

	mu      sync.Mutex
	origins map[int]string // pid we moved in → cgroup directory it came from
}

// NewCgroup creates a child of the cgroup2 mount named
// "socklb-test-<random>". When the test ends, it moves our own processes
// that are still inside back to where they came from and removes the cgroup.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	c, cleanup, err := CreateCgroup("socklb-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("remove cgroup %s: %v", c.path, err)
		}
	})
	return c
}

// CreateCgroup creates <cgroup2 mount>/<prefix><random>. cleanup moves the
// processes this package put inside back out and removes the cgroup (and any
// empty cgroups below it). It fails, without touching them, when processes
// it did not put there are still inside.
func CreateCgroup(prefix string) (c *Cgroup, cleanup func() error, err error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, nil, err
	}
	mount, err := Cgroup2Mount()
	if err != nil {
		return nil, nil, err
	}
	path := filepath.Join(mount, prefix+randomSuffix())
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create cgroup: %w", err)
	}
	if err := CheckChildCgroup(path); err != nil {
		return nil, nil, errors.Join(err, os.Remove(path))
	}
	c = &Cgroup{path: path, origins: map[int]string{}}
	return c, c.remove, nil
}

// Child creates the cgroup rel (a relative path, parents made as needed)
// below c, as the kubelet makes a pod's (kubepods/besteffort/pod<uid>/…),
// and removes it when the test ends, before c.
func (c *Cgroup) Child(t testing.TB, rel string) *Cgroup {
	t.Helper()
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		t.Fatalf("child cgroup %q: want a relative path below %s", rel, c.path)
	}
	path := filepath.Join(c.path, rel)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	child := &Cgroup{path: path, origins: map[int]string{}}
	t.Cleanup(func() {
		if err := child.remove(); err != nil {
			t.Errorf("remove cgroup %s: %v", path, err)
		}
	})
	return child
}

// Path is the cgroup's directory, e.g. /sys/fs/cgroup/unified/socklb-test-…;
// attach programs here.
func (c *Cgroup) Path() string { return c.path }

func (c *Cgroup) String() string { return c.path }

// EnterSelf moves this whole process (every thread) into c. Sockets created
// afterwards belong to c; sockets that already exist keep their cgroup.
// restore moves the process back to the cgroup it came from; calling it
// more than once is harmless. Tests that call EnterSelf must not run in
// parallel with tests that expect the process elsewhere.
func (c *Cgroup) EnterSelf() (restore func() error, err error) {
	pid := os.Getpid()
	if err := c.addProc(pid); err != nil {
		return nil, err
	}
	var (
		once       sync.Once
		restoreErr error
	)
	return func() error {
		once.Do(func() { restoreErr = c.moveOut(pid) })
		return restoreErr
	}, nil
}

// AddProc moves a process that the caller started (by PID) into c; cleanup
// moves it back to its previous cgroup if it is still inside.
func (c *Cgroup) AddProc(pid int) error { return c.addProc(pid) }

func (c *Cgroup) addProc(pid int) error {
	if err := CheckChildCgroup(c.path); err != nil {
		return err
	}
	origin, err := procCgroup(strconv.Itoa(pid))
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if origin == c.path {
		return nil // already inside; keep the recorded origin
	}
	if err := writeProcs(c.path, pid); err != nil {
		return fmt.Errorf("move pid %d into %s: %w", pid, c.path, err)
	}
	c.origins[pid] = origin
	return nil
}

// track records a process started directly inside c (CLONE_INTO_CGROUP).
func (c *Cgroup) track(pid int, origin string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.origins[pid] = origin
}

// moveOut moves pid back to where it came from if it is still inside c.
func (c *Cgroup) moveOut(pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	origin, ok := c.origins[pid]
	if !ok {
		return nil
	}
	pids, err := readProcs(c.path)
	if err != nil {
		return err
	}
	if slices.Contains(pids, pid) {
		if err := writeProcs(origin, pid); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("move pid %d back to %s: %w", pid, origin, err)
		}
	}
	delete(c.origins, pid)
	return nil
}

func (c *Cgroup) remove() error {
	if _, err := os.Stat(c.path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := CheckChildCgroup(c.path); err != nil {
		return err
	}
	c.mu.Lock()
	pids := make([]int, 0, len(c.origins))
	for pid := range c.origins {
		pids = append(pids, pid)
	}
	c.mu.Unlock()
	var errs []error
	for _, pid := range pids {
		errs = append(errs, c.moveOut(pid))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return rmdirTree(c.path)
}

// rmdirTree removes the cgroup dir and the cgroups below it, deepest first.
// rmdir never removes a populated cgroup, so no process is touched. A
// process that was just killed may take a moment to leave: EBUSY is retried
// for a while.
func rmdirTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, rmdirTree(filepath.Join(dir, e.Name())))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			pids, _ := readProcs(dir)
			return fmt.Errorf("rmdir %s (pids still inside: %v): %w", dir, pids, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CheckChildCgroup returns nil only when path is a cgroup2 directory that is
// not a cgroup2 root: not a cgroup2 mount point, and not the root of the
// hierarchy under any other name (the root has no cgroup.type file; every
// child has one). Everything that writes to or attaches at a cgroup should
// call it first.
func CheckChildCgroup(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("cgroup path %q is not absolute", path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("cgroup path: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(real, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", real, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not on a cgroup2 file system", path)
	}
	mounts, err := cgroup2Mounts()
	if err != nil {
		return err
	}
	if slices.Contains(mounts, real) {
		return fmt.Errorf("%s: %w", path, ErrCgroupRoot)
	}
	if _, err := os.Stat(filepath.Join(real, "cgroup.type")); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s (no cgroup.type): %w", path, ErrCgroupRoot)
	} else if err != nil {
		return err
	}
	return nil
}

// Cgroup2Mount returns the first mount point of type cgroup2 in
// /proc/mounts, e.g. /sys/fs/cgroup/unified in a hybrid layout.
func Cgroup2Mount() (string, error) {
	mounts, err := cgroup2Mounts()
	if err != nil {
		return "", err
	}
	if len(mounts) == 0 {
		return "", errors.New("no cgroup2 file system in /proc/mounts")
	}
	return mounts[0], nil
}

func cgroup2Mounts() ([]string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMounts(f, "cgroup2")
}

// parseMounts returns the mount points of fstype, in order, from text in
// /proc/mounts format (octal escapes such as \040 decoded).
func parseMounts(r io.Reader, fstype string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != fstype {
			continue
		}
		out = append(out, UnescapeMount(fields[1]))
	}
	return out, sc.Err()
}

// UnescapeMount undoes the octal escapes (\040 for a space) of a path in
// /proc/mounts or /proc/self/mountinfo.
func UnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// procCgroup returns the cgroup2 directory of a process ("self" or a PID),
// from the "0::/..." line of /proc/PID/cgroup.
// startCgroup is the cgroup this process was in when it started, read at
// package initialisation, before any test moves the process.
var startCgroup, _ = procCgroup("self")

// StartCgroup returns the cgroup this process started in ("" if it could
// not be read). Processes that must not be born inside a client cgroup the
// test has since entered (agents, kube-proxy) are started there.
func StartCgroup() string { return startCgroup }

func procCgroup(pid string) (string, error) {
	data, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", err
	}
	rel, err := parseProcCgroup(string(data))
	if err != nil {
		return "", fmt.Errorf("/proc/%s/cgroup: %w", pid, err)
	}
	mount, err := Cgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(mount, rel), nil
}

// parseProcCgroup returns the path of the "0::" (cgroup2) line.
func parseProcCgroup(s string) (string, error) {
	for line := range strings.Lines(s) {
		if rel, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			// "/.." appears for cgroups outside our cgroup namespace.
			if !strings.HasPrefix(rel, "/") || strings.HasSuffix(rel, " (deleted)") ||
				slices.Contains(strings.Split(rel, "/"), "..") {
				return "", fmt.Errorf("unusable cgroup2 path %q", rel)
			}
			return rel, nil
		}
	}
	return "", errors.New("no cgroup2 (0::) line")
}

func readProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range strings.FieldsSeq(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func writeProcs(dir string, pid int) error {
	f, err := os.OpenFile(filepath.Join(dir, "cgroup.procs"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(strconv.Itoa(pid))
	return errors.Join(werr, f.Close())
}

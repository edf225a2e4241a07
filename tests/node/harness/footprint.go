package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
)

// Footprint identifies what a node made on the host, so that a test can
// check after teardown that none of it is left ([Footprint.Leftovers]).
type Footprint struct {
	Name       string
	CgroupRoot string
	// CgroupDirs are CgroupRoot in every hierarchy.
	CgroupDirs []string
	// Namespaces are the inodes of the node's namespaces (mnt, pid, net,
	// uts, ipc) as /proc/PID/ns shows them.
	Namespaces map[string]uint64
	// Netns is the network namespace's name under /var/run/netns.
	Netns string
	// Dir is the node's directory on the host.
	Dir string
	// Sysctls are the host's values, at Start, of the kernel settings
	// kubelet checks.
	Sysctls map[string]string
	// BPFPrograms and BPFMaps are IDs of BPF objects loaded inside the
	// node ([Footprint.AddBPF]); each must be gone after teardown.
	BPFPrograms []uint32
	BPFMaps     []uint32
	// Procs are processes the node ran (its wrappers, kubelet,
	// containerd) and those the test saw inside it ([Footprint.AddPIDs]).
	Procs []Proc
	// Before, when not 0, is the moment teardown began, in clock ticks
	// since boot (as /proc/PID/stat's starttime): only a process started
	// before it can be the node's. Namespace inodes and PIDs are reused
	// once freed; a process started later in a namespace with the same
	// inode is someone else's. The Node sets it when its teardown begins.
	Before uint64
}

// Proc identifies a process across PID reuse: its PID and start time.
type Proc struct {
	PID   int
	Start uint64 // clock ticks since boot
}

// Footprint returns what the node made, for a check after teardown. The
// node sets the returned footprint's Before when its teardown begins.
func (n *Node) Footprint() *Footprint {
	f := &Footprint{
		Name:       n.Name,
		CgroupRoot: n.CgroupRoot,
		CgroupDirs: slices.Clone(n.CgroupDirs),
		Namespaces: clonedMap(n.nsInodes),
		Netns:      n.netnsPath,
		Dir:        n.Dir,
		Sysctls:    clonedMap(n.sysctls),
	}
	f.AddPIDs(n.holder.cmd.Process.Pid, n.holder.inner)
	for _, p := range n.procs {
		f.AddPIDs(p.cmd.Process.Pid, p.inner)
	}
	n.mu.Lock()
	n.footprints = append(n.footprints, f)
	n.mu.Unlock()
	return f
}

// AddPIDs records running processes (with their start times) that must
// be gone after teardown; PIDs that do not run are skipped.
func (f *Footprint) AddPIDs(pids ...int) {
	for _, pid := range pids {
		if start, ok := procStart(pid); ok {
			f.Procs = append(f.Procs, Proc{PID: pid, Start: start})
		}
	}
}

// AddBPF records BPF programs and maps (by ID) that must be unloaded
// after teardown: the kernel frees them with their last pin, link or
// attachment, which go with the node's bpffs and cgroups.
func (f *Footprint) AddBPF(progs, maps []uint32) {
	f.BPFPrograms = append(f.BPFPrograms, progs...)
	f.BPFMaps = append(f.BPFMaps, maps...)
	slices.Sort(f.BPFPrograms)
	slices.Sort(f.BPFMaps)
	f.BPFPrograms, f.BPFMaps = slices.Compact(f.BPFPrograms), slices.Compact(f.BPFMaps)
}

// BootTicks is now in clock ticks since boot, the unit of Footprint.Before.
func BootTicks() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Sec)*userHZ + uint64(ts.Nsec)/(1e9/userHZ)
}

// userHZ is the unit of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const userHZ = 100

// procStart is the start time of pid (field 22 of /proc/PID/stat).
func procStart(pid int) (uint64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3, the state
	if len(f) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	return v, err == nil
}

// ours tells whether a process that started at start may be the node's.
func (f *Footprint) ours(start uint64) bool { return f.Before == 0 || start <= f.Before }

// String is the footprint as JSON.
func (f *Footprint) String() string {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Sprintf("footprint of %s: %v", f.Name, err)
	}
	return string(b)
}

func clonedMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Leftovers lists what of the footprint is still there, in words: a
// process in one of the node's namespaces or under its cgroup root (or one
// of PIDs still running), a cgroup directory in any hierarchy, a host
// mount below Dir or of the netns, the netns's name, a host sysctl with
// another value than before. Empty means the node is gone.
func (f *Footprint) Leftovers() []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := os.Getpid()
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || pid == self {
			continue
		}
		if start, ok := procStart(pid); !ok || !f.ours(start) {
			continue
		}
		for _, kind := range namespaces {
			ino, err := nsInode(pid, kind)
			if err == nil && ino != 0 && ino == f.Namespaces[kind] {
				left = append(left, fmt.Sprintf("process %d (%s) is in the node's %s namespace", pid, comm(pid), kind))
			}
		}
		if cg, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
			for line := range strings.Lines(string(cg)) {
				parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
				if len(parts) == 3 && (parts[2] == f.CgroupRoot || strings.HasPrefix(parts[2], f.CgroupRoot+"/")) {
					left = append(left, fmt.Sprintf("process %d (%s) is in cgroup %s", pid, comm(pid), strings.TrimSpace(line)))
					break
				}
			}
		}
	}
	for _, p := range f.Procs {
		if start, ok := procStart(p.PID); ok && start == p.Start {
			if state := procState(p.PID); state != "Z" && state != "X" && state != "" {
				left = append(left, fmt.Sprintf("process %d (%s, state %s) still runs", p.PID, comm(p.PID), state))
			}
		}
	}
	for _, d := range existingDirs(f.CgroupDirs) {
		left = append(left, "cgroup directory "+d)
	}
	if mi, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(mi)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 5 {
				continue
			}
			mp := sandbox.UnescapeMount(fields[4])
			if (f.Dir != "" && (mp == f.Dir || strings.HasPrefix(mp, f.Dir+"/"))) || (f.Netns != "" && mp == f.Netns) ||
				strings.Contains(sc.Text(), f.Name) {
				left = append(left, "host mount "+sc.Text())
			}
		}
		mi.Close()
	}
	if f.Netns != "" {
		if _, err := os.Lstat(f.Netns); err == nil {
			left = append(left, "network namespace name "+f.Netns)
		}
	}
	for k, want := range f.Sysctls {
		got, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			left = append(left, fmt.Sprintf("host sysctl %s: %v", k, err))
		} else if strings.TrimSpace(string(got)) != want {
			left = append(left, fmt.Sprintf("host sysctl %s is %s, was %s", k, strings.TrimSpace(string(got)), want))
		}
	}
	for _, id := range f.BPFPrograms {
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
			info, _ := p.Info()
			name := ""
			if info != nil {
				name = info.Name
			}
			p.Close()
			left = append(left, fmt.Sprintf("BPF program %d (%s) is still loaded", id, name))
		}
	}
	for _, id := range f.BPFMaps {
		if m, err := ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
			info, _ := m.Info()
			name := ""
			if info != nil {
				name = info.Name
			}
			m.Close()
			left = append(left, fmt.Sprintf("BPF map %d (%s) still exists", id, name))
		}
	}
	slices.Sort(left)
	return slices.Compact(left)
}

func comm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// procState is the state letter of /proc/PID/stat, "" when gone.
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// PodPIDs returns the host PIDs of the processes of the pod with this
// UID: those whose cgroup, in any hierarchy, is the pod's below
// CgroupRoot (kubepods/<qos>/pod<uid>/...).
func (n *Node) PodPIDs(uid string) ([]int, error) {
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, dir := range procs {
		cg, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(cg)) {
			parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
			if len(parts) == 3 && strings.HasPrefix(parts[2], n.CgroupRoot+"/kubepods") && strings.Contains(parts[2], "/pod"+uid) {
				if pid, err := strconv.Atoi(filepath.Base(dir)); err == nil {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids, nil
}

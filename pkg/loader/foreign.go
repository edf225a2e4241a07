package loader

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ErrForeignPrograms: programs with socklb's names are attached to the
// cgroup, but not through links pinned in this pin directory: another
// agent (with other pins) serves this cgroup, and both would run.
var ErrForeignPrograms = errors.New("socklb programs of another pin directory are attached to the cgroup")

// objNameLen is how much of a program's name the kernel keeps
// (BPF_OBJ_NAME_LEN less the NUL).
const objNameLen = 15

// ownLinkIDs are the ids of the links, and of their programs, pinned as
// link_* under dir: what this pin directory has attached.
func ownLinkIDs(dir string) (links map[link.ID]bool, progs map[ebpf.ProgramID]bool, err error) {
	links, progs = map[link.ID]bool{}, map[ebpf.ProgramID]bool{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read pin directory: %w", err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), linkPrefix) {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue // not a link: not ours either
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("read pinned link %s: %w", e.Name(), err)
		}
		links[info.ID] = true
		progs[info.Program] = true
	}
	return links, progs, nil
}

// checkForeignPrograms fails with ErrForeignPrograms when a program named
// like one of spec's is attached to the cgroup on one of spec's hooks and
// is not one this pin directory attached.
func checkForeignPrograms(dir, cgroupPath string, spec *ebpf.CollectionSpec) error {
	ours := map[string]bool{}
	hooks := map[ebpf.AttachType]string{}
	for name, ps := range spec.Programs {
		if ps.AttachType == ebpf.AttachTraceIter {
			continue
		}
		ours[truncName(name)] = true
		hooks[ps.AttachType] = ps.SectionName
	}
	ownLinks, ownProgs, err := ownLinkIDs(dir)
	if err != nil {
		return err
	}
	cg, err := os.Open(cgroupPath)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", cgroupPath, err)
	}
	defer cg.Close()
	var found []string
	for _, at := range slices.Sorted(maps.Keys(hooks)) {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: at})
		if err != nil {
			return fmt.Errorf("list programs on %s of %s: %w", hooks[at], cgroupPath, err)
		}
		for _, ap := range res.Programs {
			if id, ok := ap.LinkID(); (ok && ownLinks[id]) || ownProgs[ap.ID] {
				continue
			}
			prog, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				continue // gone meanwhile
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil || !ours[info.Name] {
				continue
			}
			desc := fmt.Sprintf("program %d (%s) on %s", ap.ID, info.Name, hooks[at])
			if id, ok := ap.LinkID(); ok {
				desc += fmt.Sprintf(" through link %d", id)
			}
			found = append(found, desc)
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("%s: %w: %s (another agent with another --bpffs-path? run `agent cleanup` with its pin directory, or detach them with bpftool)",
			cgroupPath, ErrForeignPrograms, strings.Join(found, "; "))
	}
	return nil
}

func truncName(name string) string {
	if len(name) > objNameLen {
		return name[:objNameLen]
	}
	return name
}

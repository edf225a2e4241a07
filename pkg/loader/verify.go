package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// DriftKind is one way the kernel's state can differ from the agent's.
type DriftKind string

// The kinds of drift Verify finds.
const (
	// DriftDirMissing: the pin directory is gone (a forced cleanup).
	DriftDirMissing DriftKind = "pin directory missing"
	// DriftMapPinMissing: no file at a map's pin.
	DriftMapPinMissing DriftKind = "map pin missing"
	// DriftMapPinReplaced: a map's pin holds another object.
	DriftMapPinReplaced DriftKind = "map pin replaced"
	// DriftLinkPinMissing: no file at a link's pin.
	DriftLinkPinMissing DriftKind = "link pin missing"
	// DriftLinkPinReplaced: a link's pin holds another object.
	DriftLinkPinReplaced DriftKind = "link pin replaced"
	// DriftLinkDetached: a link no longer runs its program on the cgroup.
	DriftLinkDetached DriftKind = "link detached"
)

// DriftItem is one thing found wrong.
type DriftItem struct {
	Kind DriftKind
	// Name is the map or program.
	Name string
	// Path is the pin.
	Path string
	// Detail says what was found there.
	Detail string
}

func (i DriftItem) String() string {
	s := fmt.Sprintf("%s: %s (%s)", i.Kind, i.Name, i.Path)
	if i.Detail != "" {
		s += ": " + i.Detail
	}
	return s
}

// Drift is what Verify found; empty when the kernel holds what the agent
// pinned and attached.
type Drift struct {
	Items []DriftItem
}

// Empty reports whether nothing drifted.
func (d Drift) Empty() bool { return len(d.Items) == 0 }

// Count is the number of items, for a metric.
func (d Drift) Count() int { return len(d.Items) }

// CountByKind counts the items of each kind, for a labelled metric.
func (d Drift) CountByKind() map[DriftKind]int {
	out := map[DriftKind]int{}
	for _, i := range d.Items {
		out[i.Kind]++
	}
	return out
}

// Summary counts the items by kind in a few words ("8 link detached, 8
// map pin missing"), for a log line's message when String is too long.
func (d Drift) Summary() string {
	if d.Empty() {
		return "no drift"
	}
	counts := d.CountByKind()
	parts := make([]string, 0, len(counts))
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	return strings.Join(parts, ", ")
}

// String describes every item, for a log line.
func (d Drift) String() string {
	if d.Empty() {
		return "no drift"
	}
	parts := make([]string, len(d.Items))
	for i, it := range d.Items {
		parts[i] = it.String()
	}
	return strings.Join(parts, "; ")
}

// Verify reads the pins and links back from the kernel and reports how
// they differ from what this Datapath holds: a map or link pin that is
// missing or holds another object, a link that no longer runs on the
// cgroup. Before Attach only the maps are checked. It changes nothing.
func (d *Datapath) Verify() (Drift, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var drift Drift
	if _, err := os.Stat(d.dir); errors.Is(err, fs.ErrNotExist) {
		drift.Items = append(drift.Items, DriftItem{Kind: DriftDirMissing, Name: filepath.Base(d.dir), Path: d.dir})
	} else if err != nil {
		return drift, fmt.Errorf("verify pin directory: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(d.pinnedMaps)) {
		item, err := d.verifyMap(name)
		if err != nil {
			return drift, err
		}
		if item != nil {
			drift.Items = append(drift.Items, *item)
		}
	}
	on, err := d.cgroupLinks()
	if err != nil {
		return drift, err
	}
	for _, al := range d.links {
		items, err := d.verifyLink(al, on)
		if err != nil {
			return drift, err
		}
		drift.Items = append(drift.Items, items...)
	}
	return drift, nil
}

func (d *Datapath) verifyMap(name string) (*DriftItem, error) {
	pin := filepath.Join(d.dir, name)
	info, err := d.pinnedMaps[name].Info()
	if err != nil {
		return nil, fmt.Errorf("verify map %s: %w", name, err)
	}
	want, _ := info.ID()
	pinned, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, fs.ErrNotExist) {
		return &DriftItem{Kind: DriftMapPinMissing, Name: name, Path: pin}, nil
	}
	if err != nil {
		return &DriftItem{Kind: DriftMapPinReplaced, Name: name, Path: pin, Detail: err.Error()}, nil
	}
	defer pinned.Close()
	pi, err := pinned.Info()
	if err != nil {
		return nil, fmt.Errorf("verify map pin %s: %w", pin, err)
	}
	if got, _ := pi.ID(); got != want {
		return &DriftItem{Kind: DriftMapPinReplaced, Name: name, Path: pin,
			Detail: fmt.Sprintf("map id %d, want %d", got, want)}, nil
	}
	return nil, nil
}

// onCgroup is what runs on the cgroup's hooks: the ids of the programs
// and (on kernels that report them) of their links.
type onCgroup struct {
	progs map[ebpf.ProgramID]bool
	links map[link.ID]bool
}

func (d *Datapath) cgroupLinks() (onCgroup, error) {
	out := onCgroup{progs: map[ebpf.ProgramID]bool{}, links: map[link.ID]bool{}}
	if len(d.links) == 0 {
		return out, nil
	}
	cg, err := os.Open(d.cgroupPath)
	if err != nil {
		return out, fmt.Errorf("verify links: open cgroup: %w", err)
	}
	defer cg.Close()
	seen := map[ebpf.AttachType]bool{}
	for _, al := range d.links {
		if seen[al.attachType] {
			continue
		}
		seen[al.attachType] = true
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: al.attachType})
		if err != nil {
			return out, fmt.Errorf("verify links: list programs on %s of %s: %w", al.section, d.cgroupPath, err)
		}
		for _, ap := range res.Programs {
			out.progs[ap.ID] = true
			if id, ok := ap.LinkID(); ok {
				out.links[id] = true
			}
		}
	}
	return out, nil
}

func (d *Datapath) verifyLink(al attachedLink, on onCgroup) ([]DriftItem, error) {
	var items []DriftItem
	pin := filepath.Join(d.dir, linkPrefix+al.name)
	info, err := al.link.Info()
	if err != nil {
		return nil, fmt.Errorf("verify link %s: %w", al.name, err)
	}
	cg := info.Cgroup()
	// A program runs through one link at a time: ours is on the hook if
	// the link or its program is listed there.
	listed := on.links[info.ID] || (len(on.links) == 0 && on.progs[info.Program])
	if cg == nil || cg.CgroupId != d.cgroupID || !listed {
		items = append(items, DriftItem{Kind: DriftLinkDetached, Name: al.name, Path: pin,
			Detail: fmt.Sprintf("link %d is not on %s", info.ID, al.section)})
	}
	pinned, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		items = append(items, DriftItem{Kind: DriftLinkPinMissing, Name: al.name, Path: pin})
	case err != nil:
		items = append(items, DriftItem{Kind: DriftLinkPinReplaced, Name: al.name, Path: pin, Detail: err.Error()})
	default:
		pi, err := pinned.Info()
		pinned.Close()
		if err != nil {
			return nil, fmt.Errorf("verify link pin %s: %w", pin, err)
		}
		if pi.ID != info.ID {
			items = append(items, DriftItem{Kind: DriftLinkPinReplaced, Name: al.name, Path: pin,
				Detail: fmt.Sprintf("link id %d, want %d", pi.ID, info.ID)})
		}
	}
	return items, nil
}

// Repair puts back what Verify found: it re-creates the pin directory,
// pins the maps and links this Datapath holds again, and attaches a
// detached link's program anew (pinning the new link). It repairs only
// the items given; run Verify again to see the result.
func (d *Datapath) Repair(drift Drift) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, it := range drift.Items {
		if it.Kind == DriftDirMissing {
			created, err := prepareDir(d.dir, d.log)
			if err != nil {
				return fmt.Errorf("repair: %w", err)
			}
			if len(created) > 0 {
				d.log.Warn("re-created the pin directory; the agent's lock is on the old one until it restarts", "bpffs", d.dir)
			}
		}
	}
	for _, it := range drift.Items {
		var err error
		switch it.Kind {
		case DriftMapPinMissing, DriftMapPinReplaced:
			err = d.repinMap(it.Name)
		case DriftLinkDetached:
			err = d.reattach(it.Name)
		case DriftLinkPinMissing, DriftLinkPinReplaced:
			if slices.ContainsFunc(drift.Items, func(o DriftItem) bool { return o.Kind == DriftLinkDetached && o.Name == it.Name }) {
				continue // reattach pins the new link
			}
			err = d.repinLink(it.Name)
		default:
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.log.Info("repaired", "drift", it.Kind, "name", it.Name, "path", it.Path)
	}
	return errors.Join(errs...)
}

func (d *Datapath) repinMap(name string) error {
	m := d.pinnedMaps[name]
	if m == nil {
		return fmt.Errorf("repair: no map %s", name)
	}
	pin := filepath.Join(d.dir, name)
	// Unpin removes what holds the pin now (another object) and makes
	// the map forget its path, so that Pin pins it again.
	if err := m.Unpin(); err != nil {
		return fmt.Errorf("repair map pin %s: %w", pin, err)
	}
	if err := removePin(pin); err != nil {
		return fmt.Errorf("repair map pin %s: %w", pin, err)
	}
	if err := m.Pin(pin); err != nil {
		return fmt.Errorf("repair map pin %s: %w", pin, err)
	}
	return nil
}

func (d *Datapath) linkIndex(name string) (int, error) {
	i := slices.IndexFunc(d.links, func(al attachedLink) bool { return al.name == name })
	if i < 0 {
		return 0, fmt.Errorf("repair: no link for program %s", name)
	}
	return i, nil
}

func (d *Datapath) repinLink(name string) error {
	i, err := d.linkIndex(name)
	if err != nil {
		return err
	}
	l := d.links[i].link
	pin := filepath.Join(d.dir, linkPrefix+name)
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("repair link pin %s: %w", pin, err)
	}
	if err := removePin(pin); err != nil {
		return fmt.Errorf("repair link pin %s: %w", pin, err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("repair link pin %s: %w", pin, err)
	}
	return nil
}

// reattach attaches the program of a detached link again, with a new
// link pinned in place of the old one.
func (d *Datapath) reattach(name string) error {
	i, err := d.linkIndex(name)
	if err != nil {
		return err
	}
	al := d.links[i]
	pin := filepath.Join(d.dir, linkPrefix+name)
	l, err := link.AttachCgroup(link.CgroupOptions{Path: d.cgroupPath, Attach: al.attachType, Program: al.prog})
	if err != nil {
		return fmt.Errorf("repair: attach %s to %s again: %w", name, d.cgroupPath, err)
	}
	// The old link's pin, if still there, holds the detached link.
	if err := errors.Join(al.link.Unpin(), removePin(pin)); err != nil {
		return errors.Join(fmt.Errorf("repair: unpin detached link %s: %w", pin, err), l.Close())
	}
	if err := l.Pin(pin); err != nil {
		return errors.Join(fmt.Errorf("repair: pin link %s: %w", pin, err), l.Close())
	}
	old := al.link
	d.links[i].link = l
	d.log.Warn("re-attached a detached program", "program", name, "hook", al.section, "cgroup", d.cgroupPath)
	return old.Close()
}

// removePin removes whatever is at pin; a missing one is fine.
func removePin(pin string) error {
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

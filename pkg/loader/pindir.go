package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
)

// checkBPFFS fails with ErrNotBPFFS unless dir, or when it does not exist
// yet the nearest parent that does, is on a bpf filesystem. Nothing is
// changed on the path before this check.
func checkBPFFS(dir string) error {
	if dir == "" {
		return errors.New("empty bpffs path")
	}
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				where := p
				if p != filepath.Clean(dir) {
					where = fmt.Sprintf("%s (the nearest existing parent of %s)", p, dir)
				}
				return fmt.Errorf("%s: %w (mount one with `mount -t bpf bpf /sys/fs/bpf`)", where, ErrNotBPFFS)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("statfs %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("statfs %s: %w", p, err)
		}
		p = parent
	}
}

// prepareDir makes sure dir is a directory on bpffs, and creates it (and
// missing parents, all on bpffs) with mode 0700 when it does not exist.
// It returns the directories it created, topmost first. The mode of an
// existing directory is left alone: whoever made it (an operator's
// hostPath, a shared mount) may rely on it, and the pins in it are the
// kernel's mode 0600 files whatever the directory's mode; a looser one is
// logged.
func prepareDir(dir string, log *slog.Logger) (created []string, err error) {
	// A directory removed while we look at it (a cleanup racing a
	// waiting agent) is looked at again.
	for range 3 {
		created, err = prepareDirOnce(dir, log)
		if !errors.Is(err, errDirVanished) {
			return created, err
		}
	}
	return nil, fmt.Errorf("pin directory %s: %w", dir, errDirVanished)
}

// errDirVanished: the pin directory was removed between two looks at it.
var errDirVanished = errors.New("removed while being prepared")

func prepareDirOnce(dir string, log *slog.Logger) (created []string, err error) {
	if err := checkBPFFS(dir); err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		created = append([]string{p}, created...)
		if filepath.Dir(p) == p {
			break
		}
	}
	if len(created) > 0 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		for _, p := range created {
			// Mkdir's mode passes through the umask; these are ours.
			if err := os.Chmod(p, 0o700); err != nil {
				return nil, errors.Join(fmt.Errorf("restrict pin directory: %w", err), removeDirs(created))
			}
		}
		return created, nil
	}
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errDirVanished
	}
	if err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("pin directory %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		log.Warn("pin directory is open to other users; leaving its mode as its owner set it",
			"bpffs", dir, "mode", fmt.Sprintf("%#o", perm))
	}
	return nil, nil
}

// removeDirs removes directories made by prepareDir, deepest first, and
// only while they are empty.
func removeDirs(created []string) error {
	var errs []error
	for i := len(created) - 1; i >= 0; i-- {
		if err := os.Remove(created[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory made by this start: %w", err))
		}
	}
	return errors.Join(errs...)
}

// olderMapName matches the maps of every socklb layout (socklb_svc_v2)
// and the old pins a resize renamed aside (socklb_svc_v3_resized_1700000000;
// bpffs allows no dot in a name).
var olderMapName = regexp.MustCompile(`^socklb_[a-z0-9_]+_v[0-9]+(_resized_[0-9]+)?$`)

// resizeSuffix starts the suffix of a map pin renamed aside by a resize.
const resizeSuffix = "_resized_"

// socklbMapName reports whether name is the pin name of a socklb map.
func socklbMapName(spec *ebpf.CollectionSpec, name string) bool {
	return spec.Maps[name] != nil || olderMapName.MatchString(name)
}

// recognizeMap reports whether the pin dir/name is a map of socklb's: a
// socklb map name that opens as a BPF map and, for this version's names
// (also renamed aside), has this version's type and key and value sizes.
// why says what is wrong with it otherwise.
func recognizeMap(spec *ebpf.CollectionSpec, dir, name string) (ok bool, why string) {
	if !socklbMapName(spec, name) {
		return false, "not the name of a socklb map"
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return false, fmt.Sprintf("does not open as a BPF map: %v", err)
	}
	defer m.Close()
	base, _, _ := strings.Cut(name, resizeSuffix)
	ms := spec.Maps[base]
	if ms == nil {
		return true, ""
	}
	info, err := m.Info()
	if err != nil {
		return false, fmt.Sprintf("map info: %v", err)
	}
	if info.Type != ms.Type || info.KeySize != ms.KeySize || info.ValueSize != ms.ValueSize {
		return false, fmt.Sprintf("a %v map with %d-byte keys and %d-byte values, not socklb's %v with %d and %d",
			info.Type, info.KeySize, info.ValueSize, ms.Type, ms.KeySize, ms.ValueSize)
	}
	return true, ""
}

// recognizeLink reports whether dir/name is a pinned link of socklb's: a
// link_ name that opens as a BPF link.
func recognizeLink(dir, name string) (ok bool, why string) {
	if !strings.HasPrefix(name, linkPrefix) {
		return false, "not the name of a socklb link"
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
	if err != nil {
		return false, fmt.Sprintf("does not open as a BPF link: %v", err)
	}
	l.Close()
	return true, ""
}

// CleanupOptions change what Cleanup does.
type CleanupOptions struct {
	// Force cleans up even while an agent holds the pin directory's lock.
	// The agent sees its datapath gone and reports (and repairs) it; the
	// directory itself stays, since the agent's lock is on it.
	Force  bool
	Logger *slog.Logger
}

// Cleanup is CleanupWithOptions without Force: it refuses, with ErrInUse,
// while an agent runs on dir.
func Cleanup(dir string, log *slog.Logger) error {
	return CleanupWithOptions(dir, CleanupOptions{Logger: log})
}

// CleanupWithOptions detaches the links and unpins the maps socklb pinned
// under dir, then removes dir. Only what it recognizes as socklb's is
// touched (see recognizeMap and recognizeLink): anything else is logged
// and left, and so is dir. A dir that is not on bpffs is refused with
// ErrNotBPFFS before anything is touched; one that does not exist is
// nothing to do, so Cleanup can be rerun. It holds the directory's lock
// while it works, so that no agent starts meanwhile.
func CleanupWithOptions(dir string, opts CleanupOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		log.Info("nothing to clean up", "bpffs", dir)
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("cleanup: statfs %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("cleanup: %s: %w; refusing to remove anything there", dir, ErrNotBPFFS)
	}
	spec, err := socklb.LoadBpf()
	if err != nil {
		return fmt.Errorf("read bpf objects: %w", err)
	}
	lock, err := tryLock(dir, false, log)
	agentRuns := false
	switch {
	case errors.Is(err, ErrInUse) && opts.Force:
		pid, _, _ := LockHolder(dir)
		log.Warn("cleaning up while an agent runs on the pin directory (--force): the running agent will notice and report it",
			"bpffs", dir, "agent_pid", pidString(pid))
		agentRuns = true
	case errors.Is(err, ErrInUse):
		return fmt.Errorf("cleanup: %w; stop it first, or pass --force", err)
	case err != nil:
		return fmt.Errorf("cleanup: %w", err)
	default:
		defer lock.Close()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	var errs []error
	left := 0
	// Links first: once no hook runs a program, the maps are unused.
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !strings.HasPrefix(e.Name(), linkPrefix) {
			continue
		}
		if ok, why := recognizeLink(dir, e.Name()); !ok {
			log.Warn("left a pin that is not socklb's", "path", p, "reason", why)
			left++
			continue
		}
		if err := detachPinned(p); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("detached", "link", p)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), linkPrefix) {
			continue
		}
		if ok, why := recognizeMap(spec, dir, e.Name()); !ok {
			log.Warn("left a pin that is not socklb's", "path", p, "reason", why)
			left++
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
			continue
		}
		log.Info("unpinned", "map", p)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup %s: %w", dir, err)
	}
	switch {
	case left > 0:
		log.Warn("kept the pin directory: it holds what socklb did not pin", "bpffs", dir, "entries_left", left)
	case agentRuns:
		log.Info("kept the pin directory: the running agent holds its lock", "bpffs", dir)
	default:
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("cleanup: remove %s: %w", dir, err)
		}
	}
	return nil
}

func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	// Detach works while other processes still hold the link, unlike
	// unpinning alone.
	if err := l.Detach(); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	return nil
}

// removeStalePins unpins socklb maps under dir that the current objects do
// not define: the layouts an older agent used, and the old pins of
// resized maps.
func removeStalePins(dir string, spec *ebpf.CollectionSpec, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read pin directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if spec.Maps[name] != nil || !socklbMapName(spec, name) {
			continue
		}
		if ok, why := recognizeMap(spec, dir, name); !ok {
			log.Warn("left a pin with a socklb name that is not socklb's map", "path", filepath.Join(dir, name), "reason", why)
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("unpin stale map %s: %w", name, err)
		}
		log.Info("unpinned a map of an older layout", "map", name)
	}
	return nil
}

// otherPins lists what is pinned under dir besides this version's maps:
// the links of every version, and the maps of other layouts (and the old
// pins of resized maps).
func otherPins(dir string, spec *ebpf.CollectionSpec) (links, staleMaps []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read pin directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, linkPrefix):
			if ok, _ := recognizeLink(dir, name); ok {
				links = append(links, filepath.Join(dir, name))
			}
		case spec.Maps[name] == nil && socklbMapName(spec, name):
			if ok, _ := recognizeMap(spec, dir, name); ok {
				staleMaps = append(staleMaps, name)
			}
		}
	}
	return links, staleMaps, nil
}

// dirEntries are the names in dir.
func dirEntries(dir string) (map[string]bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read pin directory: %w", err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names, nil
}

// undoStart removes the map pins a failed Prepare made (those of spec's
// names that were not there before), puts back the pins it moved aside,
// and removes the directories it created, if empty.
func undoStart(dir string, spec *ebpf.CollectionSpec, before map[string]bool, renamed []renamedPin, created []string) error {
	var errs []error
	if spec != nil && before != nil {
		for _, name := range pinnedMapNames(spec) {
			if before[name] {
				continue
			}
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove pin made by a failed start: %w", err))
			}
		}
	}
	errs = append(errs, undoResizes(dir, renamed), removeDirs(created))
	return errors.Join(errs...)
}

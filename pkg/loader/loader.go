// Package loader puts socklb's BPF programs into the kernel and keeps them
// there: it pins the maps and the cgroup links under one bpffs directory,
// and on the next start reuses those pins, replacing the programs in place
// through the pinned links, so traffic never stops while the agent restarts
// or upgrades. Loading (Prepare) and switching the hooks (Attach) are two
// steps: maps that no attached program reads yet (a first start, a new map
// layout) are filled in between, while the programs attached before keep
// serving from their own maps. Only Cleanup detaches and unpins.
//
// One process writes a pin directory: the agent holds an flock on it
// (AcquireLock) while it runs, Cleanup takes it while it works, and
// Prepare refuses a cgroup where socklb programs of another pin directory
// run. Paths are checked before anything is changed on them: nothing is
// created or removed off bpffs, and Cleanup removes only the pins it
// recognizes as socklb's. Verify reads the pins and links back and Repair
// puts back what someone removed or detached.
package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
)

// DefaultBPFFSPath is where the agent pins its maps and links.
const DefaultBPFFSPath = "/sys/fs/bpf/socklb"

// linkPrefix starts the name of every pinned link file.
const linkPrefix = "link_"

// Sentinel errors callers branch on.
var (
	// ErrNotBPFFS: the pin directory is not on a bpf filesystem.
	ErrNotBPFFS = errors.New("not on a bpf filesystem")
	// ErrNotPinned: there is nothing pinned at the bpffs path.
	ErrNotPinned = errors.New("no socklb maps pinned")
	// ErrCgroupMismatch: a pinned link belongs to another cgroup.
	ErrCgroupMismatch = errors.New("pinned link is attached to another cgroup")
	// ErrKernelTooOld: a feature every program needs is missing.
	ErrKernelTooOld = errors.New("kernel lacks a feature socklb needs")
)

// Options say where to pin and where to attach.
type Options struct {
	// BPFFSPath is the pin directory; it must be on bpffs (or, when it
	// does not exist yet, its nearest existing parent must be).
	BPFFSPath string
	// CgroupPath is the cgroup v2 directory the programs attach to.
	CgroupPath string
	// Lock, when set, is the caller's lock on BPFFSPath (AcquireLock),
	// held for as long as the agent runs. Without one Prepare takes the
	// lock itself, without waiting (ErrInUse), and the Datapath holds it
	// until Close.
	Lock *Lock
	// MaxServiceEntries overrides the service map size when non-zero
	// (frontends plus two halves of backend slots each). The maps that
	// scale with it follow: the member map (one entry per slot) gets as
	// many entries, the counter and name maps (one entry per frontend)
	// and the cluster IP map (one entry per address of ClusterIP
	// frontends, so at most one per frontend) half as many.
	MaxServiceEntries uint32
	// MaxBackendEntries overrides the backend map size when non-zero.
	MaxBackendEntries uint32
	// EjectAfter is the number of consecutive failed connects to a
	// backend after which the sock_ops program reports each further
	// failure to the agent (ReadOutcomes); 0 means the default, 3.
	EjectAfter uint32
	Logger     *slog.Logger
}

// The maps whose sizes Options set.
const (
	mapService  = socklb.BpfMapSocklbSvcV3
	mapMember   = socklb.BpfMapSocklbMembV3
	mapCounters = socklb.BpfMapSocklbCntV3
	mapNames    = socklb.BpfMapSocklbNameV3
	mapBackend  = socklb.BpfMapSocklbBeV3
	// One entry per backend, as the backend map.
	mapBackendStats = socklb.BpfMapSocklbBestatV3
	mapEjections    = socklb.BpfMapSocklbEjectV3
	mapAvoid        = socklb.BpfMapSocklbAvoidV3
	// One entry per cluster IP, at most one per frontend.
	mapVIPs = socklb.BpfMapSocklbVipV3
)

// Datapath holds the loaded maps and programs of a running agent and, once
// attached, its links. Closing it releases this process's handles; the
// pins keep everything in the kernel.
type Datapath struct {
	Maps socklb.BpfMaps
	// Features is what the kernel was found to support.
	Features []Feature
	links    []attachedLink
	iters    []iterator
	// pinnedMaps are the maps of Maps that live in the pin directory, by
	// pin name.
	pinnedMaps map[string]*ebpf.Map

	// What Prepare leaves for Attach.
	dir, cgroupPath string
	cgroupID        uint64
	log             *slog.Logger
	spec            *ebpf.CollectionSpec
	pending         []pendingProgram
	staleLinks      []string
	inUse           bool
	attached        atomic.Bool
	// lock is the pin directory's lock when Prepare took it itself.
	lock *Lock
	// mu serializes Attach, Verify, Repair and Close, which the agent
	// may call from different goroutines (first sync, reconciliation).
	mu sync.Mutex
}

// pendingProgram is a cgroup program loaded but not attached yet.
type pendingProgram struct {
	name, section string
	attachType    ebpf.AttachType
	prog          *ebpf.Program
	// pinned is the link an earlier agent pinned for this program; Attach
	// replaces its program. Nil when there is none.
	pinned link.Link
}

// attachedLink is a program Attach attached, and its pinned link. The
// program stays open so that Repair can attach it again.
type attachedLink struct {
	name, section string
	attachType    ebpf.AttachType
	prog          *ebpf.Program
	link          link.Link
}

// Close releases the handles without detaching anything, and the pin
// directory's lock if Prepare took it.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	errs := []error{d.Maps.Close()}
	for _, l := range d.links {
		errs = append(errs, l.link.Close(), l.prog.Close())
	}
	d.links = nil
	for _, it := range d.iters {
		errs = append(errs, it.link.Close())
	}
	d.iters = nil
	for _, p := range d.pending {
		errs = append(errs, p.prog.Close())
		if p.pinned != nil {
			errs = append(errs, p.pinned.Close())
		}
	}
	d.pending = nil
	errs = append(errs, d.lock.Close())
	d.lock = nil
	return errors.Join(errs...)
}

// MapsInUse reports whether the programs attached before Prepare already
// read these very maps: every map was reused from its pin, no map of
// another layout is pinned beside them (Attach removes those only once
// every hook has switched) and a link is pinned. Then Attach swaps
// programs over the same data and can run at once. Otherwise the maps are
// new to the datapath (first start, new map layout, a resized map, or an
// agent that stopped before its first Attach), and the caller should fill
// them before Attach: connects in between would find no service.
func (d *Datapath) MapsInUse() bool { return d.inUse }

// Attached reports whether Attach has completed.
func (d *Datapath) Attached() bool { return d.attached.Load() }

// Load is Prepare followed by Attach: the programs run against the maps at
// once, filled or not. The agent calls Prepare and Attach itself, so that
// it can fill new maps in between.
func Load(opts Options) (*Datapath, error) {
	dp, err := Prepare(opts)
	if err != nil {
		return nil, err
	}
	if err := dp.Attach(); err != nil {
		return nil, errors.Join(err, dp.Close())
	}
	return dp, nil
}

// Prepare loads the programs and pins (or reuses) the maps, and checks
// that the links an earlier agent pinned belong to the cgroup and that no
// other pin directory's socklb programs run there; of the programs it
// attaches only the socket iterators, which no traffic runs through.
// Whatever programs the cgroup runs keep running until Attach. A pinned
// map whose size differs from the one asked for is moved aside and made
// anew (see resizePinnedMaps). When Prepare fails, it removes what it
// created (pins, and the directories made for the lock) and puts back what
// it moved; nothing else.
func Prepare(opts Options) (_ *Datapath, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.BPFFSPath == "" {
		return nil, errors.New("empty bpffs path")
	}
	dir := filepath.Clean(opts.BPFFSPath)
	lock, owned := opts.Lock, false
	if lock != nil && lock.dir != dir {
		return nil, fmt.Errorf("the lock is on %s, not on the pin directory %s", lock.dir, dir)
	}
	// A failed start leaves what it found: it removes what it made (the
	// directories made for the lock, the pins) and puts back what it
	// moved.
	var (
		created []string
		spec    *ebpf.CollectionSpec
		before  map[string]bool
		renamed []renamedPin
	)
	created = lock.takeCreated()
	defer func() {
		if err == nil {
			return
		}
		err = errors.Join(err, undoStart(dir, spec, before, renamed, created))
		if owned {
			err = errors.Join(err, lock.Close())
		}
	}()
	cgroupID, err := cgroupID(opts.CgroupPath)
	if err != nil {
		return nil, err
	}
	if lock == nil {
		if lock, err = tryLock(dir, true, log); err != nil {
			return nil, err
		}
		owned = true
		created = lock.takeCreated()
	}

	spec, err = socklb.LoadBpf()
	if err != nil {
		return nil, fmt.Errorf("read bpf objects: %w", err)
	}
	if err := setMapSizes(spec, opts); err != nil {
		return nil, err
	}
	if opts.EjectAfter > 0 {
		if err := spec.Variables[socklb.BpfVarEjectAfter].Set(opts.EjectAfter); err != nil {
			return nil, fmt.Errorf("set eject_after: %w", err)
		}
	}
	feats := ProbeFeatures()
	logFeatures(log, feats)
	if !available(feats, FeatSockDestroy) {
		// The iterators call a kfunc that older kernels lack; without
		// them the rest still loads, and departed backends' sockets are
		// left to time out.
		for name, ps := range spec.Programs {
			if ps.AttachType == ebpf.AttachTraceIter {
				delete(spec.Programs, name)
			}
		}
	}
	for _, name := range unusable(feats, true) {
		// Connects are balanced without it; least-connections picks at
		// random and no backend is ejected (the features logged above).
		delete(spec.Programs, name)
	}
	if missing := unusable(feats, false); len(missing) > 0 {
		// Every hook needs the same core; a partial socket LB (connects
		// rewritten, replies not) would be worse than none.
		return nil, fmt.Errorf("%w: this kernel cannot run %v (see the features logged above)", ErrKernelTooOld, missing)
	}
	if err := checkForeignPrograms(dir, opts.CgroupPath, spec); err != nil {
		return nil, err
	}
	if before, err = dirEntries(dir); err != nil {
		return nil, err
	}
	if renamed, err = resizePinnedMaps(dir, spec, log); err != nil {
		return nil, err
	}
	reused := pinnedNames(dir, spec)
	linkPins, staleMaps, err := otherPins(dir, spec)
	if err != nil {
		return nil, err
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: dir},
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load bpf objects: a map pinned under %s has another layout (run `agent cleanup` or move to a new map version): %w", dir, err)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// Its %+v is the whole verifier log; %v only its end.
			log.Error("the verifier rejected a program", "log", fmt.Sprintf("%+v", ve))
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	// What is not detached from the collection below is not needed.
	defer coll.Close()
	dp := &Datapath{Features: feats, dir: dir, cgroupPath: opts.CgroupPath, cgroupID: cgroupID,
		log: log, spec: spec, pinnedMaps: map[string]*ebpf.Map{}}
	for _, name := range pinnedMapNames(spec) {
		dp.pinnedMaps[name] = coll.Maps[name]
	}
	if err := coll.Assign(&dp.Maps); err != nil {
		return nil, fmt.Errorf("assign maps: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, dp.Close())
		}
	}()
	dp.inUse = len(reused) == len(pinnedMapNames(spec)) && len(staleMaps) == 0 && len(linkPins) > 0
	log.Info("maps ready", "bpffs", dir, "reused", reused, "in_use", dp.inUse)

	ours := map[string]bool{}
	names := slices.Sorted(maps.Keys(coll.Programs))
	for _, name := range names {
		ps := spec.Programs[name]
		if ps.AttachType == ebpf.AttachTraceIter {
			// Iterators run only when read; they need no pin, since the
			// agent reading them is the one holding them.
			it, err := link.AttachIter(link.IterOptions{Program: coll.Programs[name]})
			if err != nil {
				return nil, fmt.Errorf("attach iterator %s: %w", name, err)
			}
			dp.iters = append(dp.iters, iterator{name: name, section: ps.SectionName, link: it})
			continue
		}
		ours[linkPrefix+name] = true
		pinned, err := openPinnedLink(dir, opts.CgroupPath, cgroupID, name)
		if err != nil {
			return nil, err
		}
		dp.pending = append(dp.pending, pendingProgram{name: name, section: ps.SectionName,
			attachType: ps.AttachType, prog: coll.DetachProgram(name), pinned: pinned})
	}
	for _, pin := range linkPins {
		if !ours[filepath.Base(pin)] {
			dp.staleLinks = append(dp.staleLinks, pin)
		}
	}
	if owned {
		dp.lock = lock
	}
	return dp, nil
}

// Attach makes the cgroup run the prepared programs: the program of a
// pinned link is replaced in one step, so that the hook is never empty,
// and a hook without one gets a new pinned link. Then the links and maps
// of older versions (and the old pins of resized maps), which no hook
// uses any more, are detached and unpinned. After a failure Attach may be
// called again; after success it does nothing.
func (d *Datapath) Attach() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.attached.Load() {
		return nil
	}
	for len(d.pending) > 0 {
		p := d.pending[0]
		l, replaced, err := attach(d.dir, d.cgroupPath, p)
		if err != nil {
			return err
		}
		d.pending = d.pending[1:]
		d.links = append(d.links, attachedLink{name: p.name, section: p.section,
			attachType: p.attachType, prog: p.prog, link: l})
		d.log.Info("program attached", "program", p.name, "hook", p.section,
			"cgroup", d.cgroupPath, "replaced_in_place", replaced)
	}
	for len(d.staleLinks) > 0 {
		// A hook this version has no program for: the older program
		// would go on reading maps that are about to be unpinned.
		if err := detachPinned(d.staleLinks[0]); err != nil {
			return err
		}
		d.log.Info("detached a link of an older version", "link", d.staleLinks[0])
		d.staleLinks = d.staleLinks[1:]
	}
	// Only now that every hook runs the new programs are maps of older
	// layouts unused; their pins go, so nothing keeps them alive.
	if err := removeStalePins(d.dir, d.spec, d.log); err != nil {
		return err
	}
	d.attached.Store(true)
	return nil
}

// openPinnedLink opens the link an earlier agent pinned for program name,
// nil if there is none, and checks that it is attached to the cgroup.
func openPinnedLink(dir, cgroupPath string, cgroupID uint64, name string) (link.Link, error) {
	pin := filepath.Join(dir, linkPrefix+name)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("read pinned link %s: %w", pin, err)
	}
	if cg := info.Cgroup(); cg == nil || cg.CgroupId != cgroupID {
		l.Close()
		return nil, fmt.Errorf("%s: %w (want %s)", pin, ErrCgroupMismatch, cgroupPath)
	}
	return l, nil
}

// attach swaps the program of p's pinned link atomically, or creates and
// pins a new link.
func attach(dir, cgroupPath string, p pendingProgram) (link.Link, bool, error) {
	pin := filepath.Join(dir, linkPrefix+p.name)
	if p.pinned != nil {
		if err := p.pinned.Update(p.prog); err != nil {
			return nil, false, fmt.Errorf("replace program of %s: %w", pin, err)
		}
		return p.pinned, true, nil
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: p.attachType, Program: p.prog})
	if err != nil {
		return nil, false, fmt.Errorf("attach %s to %s: %w", p.name, cgroupPath, err)
	}
	if err := l.Pin(pin); err != nil {
		// Without the pin the link would die with this process.
		return nil, false, errors.Join(fmt.Errorf("pin link %s: %w", pin, err), l.Close())
	}
	return l, false, nil
}

// OpenPinnedMaps opens the maps pinned under dir, for inspection.
func OpenPinnedMaps(dir string) (*socklb.BpfMaps, error) {
	spec, err := socklb.LoadBpf()
	if err != nil {
		return nil, fmt.Errorf("read bpf objects: %w", err)
	}
	coll := &ebpf.Collection{Maps: map[string]*ebpf.Map{}}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			coll.Close()
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("open %s: %w", filepath.Join(dir, name), ErrNotPinned)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		coll.Maps[name] = mp
	}
	var m socklb.BpfMaps
	if err := coll.Assign(&m); err != nil {
		coll.Close()
		return nil, fmt.Errorf("assign pinned maps: %w", err)
	}
	return &m, nil
}

// pinnedMapNames are the maps of spec that live in the pin directory.
func pinnedMapNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	return names
}

func pinnedNames(dir string, spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Maps {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// cgroupID is the inode number of a cgroup v2 directory, which is what the
// kernel reports as the cgroup id of a link.
func cgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not a cgroup v2 directory", path)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return s.Ino, nil
}

// Cgroup2Mount returns where cgroup v2 is mounted, from /proc/mounts.
func Cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("find cgroup2 mount: cgroup2 is not mounted")
}

// EnsureBPFFS mounts a bpf filesystem at mountpoint unless one is there.
func EnsureBPFFS(mountpoint string) (mounted bool, err error) {
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", mountpoint, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", mountpoint, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return false, nil
	}
	if err := unix.Mount("bpf", mountpoint, "bpf", 0, "mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			return false, fmt.Errorf("mount bpffs at %s: %w CAP_SYS_ADMIN (or mount bpffs there on the host): %w", mountpoint, ErrMissingCapability, err)
		}
		return false, fmt.Errorf("mount bpffs at %s: %w", mountpoint, err)
	}
	return true, nil
}

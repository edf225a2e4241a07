package loader

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/maps"
)

func attachedPrograms(t *testing.T, cgroup string) []link.AttachedProgram {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatal(err)
	}
	return res.Programs
}

// privilegedOptions gives a test its own child cgroup and bpffs, and
// detaches and unpins what it leaves there.
func privilegedOptions(t *testing.T) (opts Options, cg *sandbox.Cgroup, dir string) {
	t.Helper()
	sandbox.RequirePrivileges(t)
	cg = sandbox.NewCgroup(t)
	dir = filepath.Join(sandbox.MountBPFFS(t), "socklb")
	t.Cleanup(func() { _ = Cleanup(dir, nil) })
	return Options{BPFFSPath: dir, CgroupPath: cg.Path()}, cg, dir
}

func mustLoad(t *testing.T, opts Options) *Datapath {
	t.Helper()
	dp, err := Load(opts)
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	return dp
}

func TestPrivilegedPinsSurviveAndAreReused(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)

	dp := mustLoad(t, opts)
	be := maps.Backend{Addr: netip.MustParseAddr("198.18.0.1"), Port: 80, Proto: maps.ProtoTCP}
	if err := maps.New(&dp.Maps).UpsertBackend(7, be); err != nil {
		t.Fatal(err)
	}
	progs := attachedPrograms(t, cg.Path())
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	// Closing the agent's handles detaches nothing.
	if got := attachedPrograms(t, cg.Path()); len(got) != 1 || got[0].ID != progs[0].ID {
		t.Fatalf("after close: attached %v, want the same single program %v", got, progs)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("pin directory mode = %v (%v), want 0700", st.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	spec, err := socklb.LoadBpf()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for name, ps := range spec.Programs {
		if ps.AttachType != ebpf.AttachTraceIter {
			want["link_"+name] = true
		}
	}
	for name, ms := range spec.Maps {
		// .rodata (the constants Options set) is loaded anew each start.
		if ms.Pinning == ebpf.PinByName {
			want[name] = true
		}
	}
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("pin %s has mode %v; others may not read it", e.Name(), info.Mode().Perm())
		}
		delete(want, e.Name())
	}
	if len(want) != 0 {
		t.Errorf("not pinned: %v", want)
	}

	// A second start reuses the maps (the backend is still there) and
	// swaps the program inside the same link.
	dp2 := mustLoad(t, opts)
	bes, err := maps.New(&dp2.Maps).Backends()
	if err != nil || bes[7] != be {
		t.Errorf("backend map after restart = %v (%v), want backend 7 kept", bes, err)
	}
	got := attachedPrograms(t, cg.Path())
	if len(got) != 1 || got[0].ID == progs[0].ID {
		t.Errorf("after restart: attached %v; want exactly one, the new program (old %d)", got, progs[0].ID)
	}

	// The agent holds the pin directory until it stops.
	if err := Cleanup(dir, nil); !errors.Is(err, ErrInUse) {
		t.Errorf("cleanup while the agent runs: %v, want ErrInUse", err)
	}
	dp2.Close()
	if err := Cleanup(dir, nil); err != nil {
		t.Fatal(err)
	}
	if got := attachedPrograms(t, cg.Path()); len(got) != 0 {
		t.Errorf("after cleanup %d programs are still attached", len(got))
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after cleanup: %v", err)
	}
	if err := Cleanup(dir, nil); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

func TestPrivilegedLoadRefusesWhatItCannotUse(t *testing.T) {
	sandbox.RequirePrivileges(t)
	cg := sandbox.NewCgroup(t)
	other := sandbox.NewCgroup(t)
	dir := filepath.Join(sandbox.MountBPFFS(t), "socklb")
	t.Cleanup(func() { _ = Cleanup(dir, nil) })

	if _, err := Load(Options{BPFFSPath: filepath.Join(t.TempDir(), "pins"), CgroupPath: cg.Path()}); !errors.Is(err, ErrNotBPFFS) {
		t.Errorf("pins on a plain directory: %v, want ErrNotBPFFS", err)
	}
	if _, err := Load(Options{BPFFSPath: dir, CgroupPath: t.TempDir()}); err == nil {
		t.Error("attaching to a directory that is not a cgroup succeeded")
	}

	dp := mustLoad(t, Options{BPFFSPath: dir, CgroupPath: cg.Path(), MaxBackendEntries: 1024})
	dp.Close()
	if _, err := Load(Options{BPFFSPath: dir, CgroupPath: other.Path(), MaxBackendEntries: 1024}); !errors.Is(err, ErrCgroupMismatch) {
		t.Errorf("same pins, other cgroup: %v, want ErrCgroupMismatch", err)
	}
	if len(attachedPrograms(t, other.Path())) != 0 {
		t.Error("a refused load attached to the other cgroup")
	}
	// A map of another size is resized (TestPrivilegedFinding2ResizePinnedMap);
	// one of another layout is refused.
	odd := filepath.Join(sandbox.MountBPFFS(t), "socklb")
	t.Cleanup(func() { _ = Cleanup(odd, nil) })
	if err := os.Mkdir(odd, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(odd, socklb.BpfMapSocklbBeV3)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Options{BPFFSPath: odd, CgroupPath: other.Path()}); !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Errorf("pinned map of another layout: %v, want ErrMapIncompatible", err)
	}
}

func TestOpenPinnedMapsWithoutPins(t *testing.T) {
	if _, err := OpenPinnedMaps(t.TempDir()); !errors.Is(err, ErrNotPinned) {
		t.Errorf("OpenPinnedMaps on an empty directory: %v, want ErrNotPinned", err)
	}
}

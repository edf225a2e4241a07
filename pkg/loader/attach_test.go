package loader

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

func attachedTo(t *testing.T, cgroup string, at ebpf.AttachType) []link.ID {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	var ids []link.ID
	for _, p := range res.Programs {
		id, _ := p.LinkID()
		ids = append(ids, id)
	}
	return ids
}

func mustPrepare(t *testing.T, opts Options) *Datapath {
	t.Helper()
	dp, err := Prepare(opts)
	if err != nil {
		t.Fatalf("prepare: %+v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// TestPrivilegedPrepareLeavesTheHooksAlone: Prepare attaches nothing, and
// says the maps are in use only when programs attached by an earlier
// Attach read them.
func TestPrivilegedPrepareLeavesTheHooksAlone(t *testing.T) {
	opts, cg, _ := privilegedOptions(t)

	// First start: new maps, nothing attached until Attach.
	dp := mustPrepare(t, opts)
	if dp.MapsInUse() || dp.Attached() {
		t.Errorf("first Prepare: in use %v, attached %v; want neither", dp.MapsInUse(), dp.Attached())
	}
	if got := attachedPrograms(t, cg.Path()); len(got) != 0 {
		t.Fatalf("Prepare attached %v", got)
	}
	dp.Close()

	// An agent that stopped before its first Attach leaves maps pinned
	// but no program reading them: they are still not in use.
	dp = mustPrepare(t, opts)
	if dp.MapsInUse() {
		t.Error("maps pinned by a Prepare without Attach count as in use")
	}
	if err := dp.Attach(); err != nil {
		t.Fatal(err)
	}
	if !dp.Attached() {
		t.Error("Attached is false after Attach")
	}
	first := attachedPrograms(t, cg.Path())
	if len(first) != 1 {
		t.Fatalf("after Attach: %v attached to connect4, want one program", first)
	}
	if err := dp.Attach(); err != nil {
		t.Errorf("second Attach: %v", err)
	}
	dp.Close()

	// A restart: the attached programs read these maps. Prepare still
	// changes nothing; Attach replaces the program in the same link.
	dp = mustPrepare(t, opts)
	if !dp.MapsInUse() {
		t.Error("restart with the same layout: maps not in use")
	}
	if got := attachedPrograms(t, cg.Path()); !slices.Equal(got, first) {
		t.Errorf("Prepare on restart changed the hook: %v, was %v", got, first)
	}
	if err := dp.Attach(); err != nil {
		t.Fatal(err)
	}
	got := attachedPrograms(t, cg.Path())
	if len(got) != 1 || got[0].ID == first[0].ID {
		t.Errorf("after Attach on restart: %v; want one new program (old %d)", got, first[0].ID)
	}
}

// TestPrivilegedAttachRemovesAnOlderVersion: pins of another layout (a map
// this version does not define, a link on a hook it does not use) keep
// the maps out of use until an Attach has switched every hook; then they
// are detached and unpinned.
func TestPrivilegedAttachRemovesAnOlderVersion(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}

	// The "older version": a map socklb_svc_v0 and a bind4 program.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(dir, "socklb_svc_v0")); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Bind,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path(), Attach: ebpf.AttachCGroupInet4Bind, Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(filepath.Join(dir, "link_old_bind4")); err != nil {
		t.Fatal(err)
	}
	l.Close()

	for i := range 2 {
		// The second round is an agent restarted before it ever
		// attached: its maps are pinned, the older ones still too.
		dp := mustPrepare(t, opts)
		if dp.MapsInUse() {
			t.Errorf("round %d: maps in use beside an older layout's", i)
		}
		if len(attachedTo(t, cg.Path(), ebpf.AttachCGroupInet4Bind)) != 1 || len(attachedPrograms(t, cg.Path())) != 0 {
			t.Fatalf("round %d: Prepare changed the hooks", i)
		}
		dp.Close()
	}

	dp := mustPrepare(t, opts)
	if err := dp.Attach(); err != nil {
		t.Fatal(err)
	}
	if got := attachedTo(t, cg.Path(), ebpf.AttachCGroupInet4Bind); len(got) != 0 {
		t.Errorf("the older version's bind4 link is still attached: %v", got)
	}
	if len(attachedPrograms(t, cg.Path())) != 1 {
		t.Error("connect4 is not attached")
	}
	for _, pin := range []string{"socklb_svc_v0", "link_old_bind4"} {
		if _, err := os.Stat(filepath.Join(dir, pin)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still pinned: %v", pin, err)
		}
	}
	dp.Close()

	if dp := mustPrepare(t, opts); !dp.MapsInUse() {
		t.Error("after the switch, the maps are not in use")
	}
}

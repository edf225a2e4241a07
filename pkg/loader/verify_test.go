package loader

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/socklb/socklb"
)

func driftKinds(d Drift) []DriftKind {
	var out []DriftKind
	for _, it := range d.Items {
		out = append(out, it.Kind)
	}
	slices.Sort(out)
	return out
}

func mustVerifyClean(t *testing.T, dp *Datapath, cgroup, dir string) {
	t.Helper()
	if drift, err := dp.Verify(); err != nil || !drift.Empty() {
		t.Fatalf("Verify: %v, %v; want no drift", drift, err)
	}
	got := attachedPrograms(t, cgroup)
	if len(got) != 1 {
		t.Fatalf("%d programs on connect4, want 1", len(got))
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link_"+socklb.BpfProgSock4Connect), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	if got[0].ID != info.Program {
		t.Errorf("connect4 runs program %d, the pinned link holds %d", got[0].ID, info.Program)
	}
}

// TestPrivilegedFinding6RepairsRemovedLinkPin: removed and replaced pins
// and a detached link are found by Verify and put back by Repair.
func TestPrivilegedFinding6RepairsRemovedLinkPin(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)
	dp := mustLoad(t, opts)
	defer dp.Close()
	mustVerifyClean(t, dp, cg.Path(), dir)

	linkPin := filepath.Join(dir, "link_"+socklb.BpfProgSock4Connect)
	svcPin := filepath.Join(dir, socklb.BpfMapSocklbSvcV3)
	bePin := filepath.Join(dir, socklb.BpfMapSocklbBeV3)
	for _, p := range []string{linkPin, svcPin, bePin} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	// Another map where the backend map's pin was.
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Pin(bePin); err != nil {
		t.Fatal(err)
	}

	drift, err := dp.Verify()
	if err != nil {
		t.Fatal(err)
	}
	want := []DriftKind{DriftLinkPinMissing, DriftMapPinMissing, DriftMapPinReplaced}
	slices.Sort(want)
	if got := driftKinds(drift); !slices.Equal(got, want) {
		t.Fatalf("Verify: %v, want %v", drift, want)
	}
	if drift.Count() != 3 || drift.String() == "" {
		t.Errorf("Count %d, String %q", drift.Count(), drift.String())
	}
	if err := dp.Repair(drift); err != nil {
		t.Fatal(err)
	}
	mustVerifyClean(t, dp, cg.Path(), dir)
	for _, p := range []string{svcPin, bePin} {
		m, err := ebpf.LoadPinnedMap(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := m.Info()
		m.Close()
		if info.Type == ebpf.Hash && info.KeySize == 4 && info.ValueSize == 4 {
			t.Errorf("%s still holds the other map", p)
		}
	}

	// Detached, as by `bpftool link detach`: the pin stays, the hook
	// runs nothing.
	l, err := link.LoadPinnedLink(linkPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if len(attachedPrograms(t, cg.Path())) != 0 {
		t.Fatal("detach left connect4 attached")
	}
	drift, err = dp.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if got := driftKinds(drift); !slices.Equal(got, []DriftKind{DriftLinkDetached}) {
		t.Fatalf("Verify after detach: %v", drift)
	}
	if err := dp.Repair(drift); err != nil {
		t.Fatal(err)
	}
	mustVerifyClean(t, dp, cg.Path(), dir)

	// The repaired datapath restarts as usual.
	dp.Close()
	if dp := mustPrepare(t, opts); !dp.MapsInUse() {
		t.Error("restart after Repair: maps not in use")
	}
}

package loader

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/socklb/socklb"
)

func asidePins(t *testing.T, dir, name string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+resizeSuffix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// connect4MapIDs are the maps the program attached to connect4 reads.
func connect4MapIDs(t *testing.T, cgroup string) []ebpf.MapID {
	t.Helper()
	progs := attachedPrograms(t, cgroup)
	if len(progs) != 1 {
		t.Fatalf("%d programs on connect4, want 1", len(progs))
	}
	p, err := ebpf.NewProgramFromID(progs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	return ids
}

// TestPrivilegedFinding2ResizePinnedMap: a pinned map of another size is
// made anew at the size asked for, while the attached programs go on
// reading the old one until Attach; then the old pin goes.
func TestPrivilegedFinding2ResizePinnedMap(t *testing.T) {
	opts, cg, dir := privilegedOptions(t)
	const svc = socklb.BpfMapSocklbSvcV3
	opts.MaxServiceEntries = 4096
	dp := mustLoad(t, opts)
	m := dp.Maps.SocklbSvcV3
	if info, err := m.Info(); err != nil || info.MaxEntries != 4096 {
		t.Fatalf("service map: %+v, %v; want 4096 entries", info, err)
	}
	// The maps of one entry per frontend, or fewer, get half.
	for _, half := range []*ebpf.Map{dp.Maps.SocklbCntV3, dp.Maps.SocklbNameV3, dp.Maps.SocklbVipV3} {
		if half.MaxEntries() != 2048 {
			t.Errorf("%v: %d entries, want 2048, half the service map", half, half.MaxEntries())
		}
	}
	key, val := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	key[0] = 1
	if err := m.Put(key, val); err != nil {
		t.Fatal(err)
	}
	oldID := mapID(t, m)
	dp.Close()

	// A start that fails after the resize puts the old pin back.
	bad := opts
	bad.MaxServiceEntries, bad.MaxBackendEntries = 8192, 1<<32-1 // E2BIG
	if dp, err := Prepare(bad); err == nil {
		dp.Close()
		t.Fatal("prepare with a backend map too large succeeded")
	}
	if aside := asidePins(t, dir, svc); len(aside) != 0 {
		t.Errorf("a failed start left old pins moved aside: %v", aside)
	}
	if pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, svc), nil); err != nil || mapID(t, pinned) != oldID {
		t.Errorf("after a failed start the service pin is not the old map (%v)", err)
	} else {
		pinned.Close()
	}

	opts.MaxServiceEntries = 8192
	var logs bytes.Buffer
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	dp = mustPrepare(t, opts)
	if dp.MapsInUse() {
		t.Error("after a resize the maps count as in use")
	}
	if info, err := dp.Maps.SocklbSvcV3.Info(); err != nil || info.MaxEntries != 8192 {
		t.Errorf("resized service map: %+v, %v; want 8192 entries", info, err)
	}
	var got []byte
	if err := dp.Maps.SocklbSvcV3.Lookup(key, &got); err == nil {
		t.Error("the new map already holds the old entry")
	}
	aside := asidePins(t, dir, svc)
	if len(aside) != 1 {
		t.Fatalf("old pins of %s: %v, want one", svc, aside)
	}
	old, err := ebpf.LoadPinnedMap(filepath.Join(dir, aside[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	if mapID(t, old) != oldID || old.Lookup(key, &got) != nil {
		t.Error("the pin moved aside is not the old map with its entry")
	}
	old.Close()
	if !slices.Contains(connect4MapIDs(t, cg.Path()), oldID) {
		t.Error("before Attach the attached program no longer reads the old map")
	}
	if want := "old_max_entries=4096 new_max_entries=8192"; !strings.Contains(logs.String(), want) {
		t.Errorf("the resize was not logged with %s:\n%s", want, logs.String())
	}

	if err := dp.Attach(); err != nil {
		t.Fatal(err)
	}
	if aside := asidePins(t, dir, svc); len(aside) != 0 {
		t.Errorf("after Attach old pins are left: %v", aside)
	}
	if ids := connect4MapIDs(t, cg.Path()); !slices.Contains(ids, mapID(t, dp.Maps.SocklbSvcV3)) {
		t.Error("after Attach the program does not read the new map")
	}
	dp.Close()

	if dp := mustPrepare(t, opts); !dp.MapsInUse() {
		t.Error("a restart at the new size: maps not in use")
	}
}

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
	"strconv"
	"time"

	"github.com/cilium/ebpf"
)

// renamedPin is a map pin a resize moved aside: the programs attached
// before go on reading that map (they hold it by reference) until Attach
// has switched every hook to the new one; then removeStalePins unpins it.
type renamedPin struct {
	name, aside string
}

// setMapSizes applies the sizes in opts to spec; zero keeps the spec's.
func setMapSizes(spec *ebpf.CollectionSpec, opts Options) error {
	sizes := []struct {
		name string
		n    uint32
	}{
		{mapService, opts.MaxServiceEntries},
		{mapMember, opts.MaxServiceEntries},
		{mapCounters, opts.MaxServiceEntries / 2},
		{mapNames, opts.MaxServiceEntries / 2},
		{mapVIPs, opts.MaxServiceEntries / 2},
		{mapBackend, opts.MaxBackendEntries},
		{mapBackendStats, opts.MaxBackendEntries},
		{mapEjections, opts.MaxBackendEntries},
		{mapAvoid, opts.MaxBackendEntries},
	}
	for _, s := range sizes {
		if s.n == 0 {
			continue
		}
		ms := spec.Maps[s.name]
		if ms == nil {
			return fmt.Errorf("set the size of map %s: the bpf objects have no such map", s.name)
		}
		ms.MaxEntries = s.n
	}
	return nil
}

// resizePinnedMaps moves aside the pins of maps whose only difference
// from spec is their number of entries, so that the collection creates
// them anew at the size asked for (a pinned map cannot be resized in
// place). Maps that differ otherwise are left, for NewCollection to
// report as incompatible.
func resizePinnedMaps(dir string, spec *ebpf.CollectionSpec, log *slog.Logger) ([]renamedPin, error) {
	var renamed []renamedPin
	for _, name := range slices.Sorted(maps.Keys(spec.Maps)) {
		ms := spec.Maps[name]
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		pin := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			// NewCollection names it.
			continue
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return renamed, fmt.Errorf("read pinned map %s: %w", pin, err)
		}
		if info.MaxEntries == ms.MaxEntries || info.Type != ms.Type || info.KeySize != ms.KeySize ||
			info.ValueSize != ms.ValueSize || info.Flags != ms.Flags {
			continue
		}
		aside, err := renameAside(dir, name)
		if err != nil {
			return renamed, err
		}
		renamed = append(renamed, renamedPin{name: name, aside: aside})
		log.Info("resizing a pinned map: the old one serves until the programs switch", "map", name,
			"old_max_entries", info.MaxEntries, "new_max_entries", ms.MaxEntries, "old_pin", aside)
	}
	return renamed, nil
}

// renameAside renames dir/name to an unused dir/name_resized_<unix time>.
func renameAside(dir, name string) (string, error) {
	stamp := time.Now().Unix()
	for i := range 100 {
		aside := name + resizeSuffix + strconv.FormatInt(stamp+int64(i), 10)
		if _, err := os.Lstat(filepath.Join(dir, aside)); err == nil {
			continue
		}
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(dir, aside)); err != nil {
			return "", fmt.Errorf("move pinned map %s aside for a resize: %w", name, err)
		}
		return aside, nil
	}
	return "", fmt.Errorf("move pinned map %s aside for a resize: no free name", name)
}

// undoResizes puts the old pins back after a failed Prepare; the new map
// pinned at the name (if any) goes.
func undoResizes(dir string, renamed []renamedPin) error {
	var errs []error
	for _, r := range renamed {
		if err := os.Remove(filepath.Join(dir, r.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("undo resize of %s: %w", r.name, err))
			continue
		}
		if err := os.Rename(filepath.Join(dir, r.aside), filepath.Join(dir, r.name)); err != nil {
			errs = append(errs, fmt.Errorf("undo resize of %s: %w", r.name, err))
		}
	}
	return errors.Join(errs...)
}

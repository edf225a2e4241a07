package reconciler

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/socklb/socklb/pkg/maps"
)

// Drift counts how the maps read back differ from what the reconciler had
// written: someone else wrote to them (bpftool, a second writer), or a
// write was lost. The reconciliation that finds it repairs it.
type Drift struct {
	// MissingFrontends were written but are not in the maps.
	MissingFrontends int
	// UnknownFrontends are in the maps but were not written (or were
	// deleted since).
	UnknownFrontends int
	// ChangedFrontends differ in their id, flags, name or backends.
	ChangedFrontends int
	// DamagedFrontends are held incompletely: a slot, member, name or
	// counter entry is missing or wrong.
	DamagedFrontends int
	// MissingBackends, UnknownBackends, ChangedBackends: the same for the
	// backend map.
	MissingBackends, UnknownBackends, ChangedBackends int
	// StrayEntries are slots and members no live frontend refers to.
	StrayEntries int
	// MissingVIPs and UnknownVIPs: the same for the cluster IP map.
	MissingVIPs, UnknownVIPs int
}

// Total is the number of differences.
func (d Drift) Total() int {
	return d.MissingFrontends + d.UnknownFrontends + d.ChangedFrontends + d.DamagedFrontends +
		d.MissingBackends + d.UnknownBackends + d.ChangedBackends + d.StrayEntries +
		d.MissingVIPs + d.UnknownVIPs
}

// Counts returns the non-zero differences by kind, for a metric label.
func (d Drift) Counts() map[string]int {
	out := map[string]int{}
	for k, v := range map[string]int{
		"missing_frontend": d.MissingFrontends, "unknown_frontend": d.UnknownFrontends,
		"changed_frontend": d.ChangedFrontends, "damaged_frontend": d.DamagedFrontends,
		"missing_backend": d.MissingBackends, "unknown_backend": d.UnknownBackends,
		"changed_backend": d.ChangedBackends, "stray_entry": d.StrayEntries,
		"missing_cluster_ip": d.MissingVIPs, "unknown_cluster_ip": d.UnknownVIPs,
	} {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

func (d Drift) String() string {
	var parts []string
	for k, v := range d.Counts() {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// compareWithKernel compares the bookkeeping with the maps read back.
func compareWithKernel(services map[maps.Frontend]written, ids map[maps.BackendID]maps.Backend,
	svcs []maps.Service, bes map[maps.BackendID]maps.Backend) Drift {
	var d Drift
	seen := make(map[maps.Frontend]bool, len(svcs))
	for _, s := range svcs {
		seen[s.Frontend] = true
		w, ok := services[s.Frontend]
		switch {
		case !ok:
			d.UnknownFrontends++
		case len(s.Damage) > 0:
			d.DamagedFrontends++
		case w.revNAT != s.RevNATID || w.flags != s.Flags || w.affinity != s.AffinityTimeout ||
			w.name != s.Name || !slices.Equal(w.backends, s.Backends):
			d.ChangedFrontends++
		}
	}
	for fe := range services {
		if !seen[fe] {
			d.MissingFrontends++
		}
	}
	for id, b := range bes {
		old, ok := ids[id]
		switch {
		case !ok:
			d.UnknownBackends++
		case old != b:
			d.ChangedBackends++
		}
	}
	for id := range ids {
		if _, ok := bes[id]; !ok {
			d.MissingBackends++
		}
	}
	return d
}

// compareVIPs compares the cluster IPs written with those read back.
func compareVIPs(written map[netip.Addr]bool, read []netip.Addr) (missing, unknown int) {
	seen := make(map[netip.Addr]bool, len(read))
	for _, a := range read {
		seen[a] = true
		if !written[a] {
			unknown++
		}
	}
	for a := range written {
		if !seen[a] {
			missing++
		}
	}
	return missing, unknown
}

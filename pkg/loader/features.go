package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// Feature is one kernel capability socklb uses, as probed at start.
type Feature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	// MinKernel is the first mainline kernel that has it.
	MinKernel string `json:"minKernel"`
	// Detail says why it is missing.
	Detail string `json:"detail,omitempty"`
	// Needed lists the programs that do not load without it.
	Needed []string `json:"neededBy,omitempty"`
}

// Feature names.
const (
	FeatSockAddr     = "cgroup sock_addr programs"
	FeatSetRetval    = "bpf_set_retval helper (ECONNREFUSED)"
	FeatSkStorage    = "socket-local storage (sk_storage)"
	FeatNetnsCookie  = "bpf_get_netns_cookie helper (affinity)"
	FeatLRUHash      = "LRU hash maps"
	FeatSockDestroy  = "bpf_sock_destroy kfunc (closing sockets of removed backends)"
	FeatBoundedLoops = "bounded loops"
	// The connect outcomes (open connections, failed connects) that
	// least-connections and outlier ejection read.
	FeatSockOps        = "cgroup sock_ops programs (connect outcomes)"
	FeatSockOpsStorage = "sk_storage in sock_ops (connect outcomes)"
	FeatSockOpsState   = "bpf_sock_ops_cb_flags_set helper (connect outcomes)"
	FeatRingbuf        = "ring buffer maps (connect outcome events)"
)

// outcomePrograms follow connect outcomes. They are optional: without
// them connects are balanced as before, least-connections sees no open
// connections (so picks at random) and no backend is ejected.
var outcomePrograms = []string{"sock_outcomes"}

type probe struct {
	name, minKernel string
	run             func() error
	needed          []string
}

func helperProbe(h asm.BuiltinFunc) func() error {
	return func() error { return features.HaveProgramHelper(ebpf.CGroupSockAddr, h) }
}

func sockOpsHelperProbe(h asm.BuiltinFunc) func() error {
	return func() error { return features.HaveProgramHelper(ebpf.SockOps, h) }
}

var allPrograms = []string{
	"sock4_connect", "sock6_connect", "sock4_sendmsg", "sock6_sendmsg",
	"sock4_recvmsg", "sock6_recvmsg", "sock4_getpeername", "sock6_getpeername",
}

var probes = []probe{
	{FeatSockAddr, "4.17", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }, allPrograms},
	{FeatBoundedLoops, "5.3", features.HaveBoundedLoops, allPrograms},
	{FeatSetRetval, "5.18", helperProbe(asm.FnSetRetval), allPrograms},
	{FeatSkStorage, "5.2", helperProbe(asm.FnSkStorageGet), allPrograms},
	{FeatNetnsCookie, "5.7", helperProbe(asm.FnGetNetnsCookie), allPrograms},
	{FeatLRUHash, "4.10", func() error { return features.HaveMapType(ebpf.LRUHash) }, allPrograms},
	{FeatSockDestroy, "6.5", haveKfunc("bpf_sock_destroy"), nil},
	{FeatSockOps, "4.13", func() error { return features.HaveProgramType(ebpf.SockOps) }, outcomePrograms},
	{FeatSockOpsStorage, "5.3", sockOpsHelperProbe(asm.FnSkStorageGet), outcomePrograms},
	{FeatSockOpsState, "4.16", sockOpsHelperProbe(asm.FnSockOpsCbFlagsSet), outcomePrograms},
	{FeatRingbuf, "5.8", sockOpsHelperProbe(asm.FnRingbufOutput), outcomePrograms},
}

func haveKfunc(name string) func() error {
	return func() error {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			return fmt.Errorf("read kernel BTF: %w", err)
		}
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			return fmt.Errorf("kernel BTF has no %s: %w", name, ebpf.ErrNotSupported)
		}
		return nil
	}
}

// ProbeFeatures checks every capability socklb uses. It never fails:
// what is missing is reported, with the reason.
func ProbeFeatures() []Feature {
	out := make([]Feature, 0, len(probes))
	for _, p := range probes {
		f := Feature{Name: p.name, MinKernel: p.minKernel, Available: true}
		if err := p.run(); err != nil {
			f.Available = false
			f.Detail = err.Error()
			if !errors.Is(err, ebpf.ErrNotSupported) {
				f.Detail = "probe failed: " + f.Detail
			}
			f.Needed = p.needed
		}
		out = append(out, f)
	}
	return out
}

// logFeatures logs the missing features once, at start.
func logFeatures(log *slog.Logger, feats []Feature) {
	for _, f := range feats {
		if !f.Available {
			log.Warn("kernel feature missing", "feature", f.Name, "min_kernel", f.MinKernel,
				"detail", f.Detail, "programs_not_loaded", f.Needed)
		}
	}
}

func available(feats []Feature, name string) bool {
	for _, f := range feats {
		if f.Name == name {
			return f.Available
		}
	}
	return false
}

// unusable returns the programs that cannot load with feats: with
// optional, the optional ones (outcomePrograms), else the others.
func unusable(feats []Feature, optional bool) []string {
	var out []string
	for _, f := range feats {
		if f.Available {
			continue
		}
		for _, p := range f.Needed {
			if slices.Contains(outcomePrograms, p) == optional {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// HasOutcomes reports whether the sock_ops program that follows connect
// outcomes is loaded: without it least-connections picks at random (every
// backend counts 0 open connections) and no backend is ejected.
func (d *Datapath) HasOutcomes() bool {
	_, ok := d.spec.Programs[outcomePrograms[0]]
	return ok
}

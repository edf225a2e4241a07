package main

import (
	"fmt"
	"io"
	"slices"
)

// A target is one figure that issue 15 set for socklb, judged from a
// run's rows: met, missed (with the figure), or not measured in the run.
type target struct {
	what string
	// judge returns the figure as text and whether it meets the target;
	// ok is false when the run did not measure it.
	judge func(rows rowIndex) (figure string, met, ok bool)
}

// rowIndex finds a run's row by size and peer.
type rowIndex map[string]Row

func (ix rowIndex) get(n int, peer string) (Row, bool) {
	r, ok := ix[fmt.Sprint(n, " ", peer)]
	return r, ok && r.Error == ""
}

var targets = []target{
	{"agent RSS at 100 000 Services ≤ 500 MiB", func(ix rowIndex) (string, bool, bool) {
		r, ok := ix.get(100000, "socklb")
		return fmt.Sprintf("%.0f MiB", r.RSSMiB), r.RSSMiB <= 500, ok && r.RSSMiB > 0
	}},
	{"agent RSS at 10 000 Services ≤ ½ of kube-proxy nftables'", func(ix rowIndex) (string, bool, bool) {
		r, ok1 := ix.get(10000, "socklb")
		k, ok2 := ix.get(10000, "kube-proxy-nftables")
		return fmt.Sprintf("%.0f MiB against %.0f MiB: %.2f×", r.RSSMiB, k.RSSMiB, r.RSSMiB/k.RSSMiB),
			r.RSSMiB <= k.RSSMiB/2, ok1 && ok2 && r.RSSMiB > 0 && k.RSSMiB > 0
	}},
	{"change latency p99 at 100 000 Services < 10 ms", func(ix rowIndex) (string, bool, bool) {
		r, ok := ix.get(100000, "socklb")
		return fmt.Sprintf("%.1f ms (p50 %.1f ms)", r.ChangeP99Ms, r.ChangeP50Ms), r.ChangeP99Ms < 10, ok && r.ChangeP99Ms > 0
	}},
	{"churn CPU ≤ 0.1× kube-proxy iptables'", churnVs("kube-proxy-iptables")},
	{"churn CPU ≤ 0.1× kube-proxy nftables'", churnVs("kube-proxy-nftables")},
	{"change latency p99 during the churn < 20 ms", func(ix rowIndex) (string, bool, bool) {
		for _, r := range ix {
			if r.Peer == "socklb" && r.Error == "" && r.ChurnProbes > 0 {
				return fmt.Sprintf("%.1f ms at %d Services (p50 %.1f ms)", r.ChurnChangeP99Ms, r.Services, r.ChurnChangeP50Ms),
					r.ChurnChangeP99Ms < 20, true
			}
		}
		return "", false, false
	}},
	{"idle CPU at 100 000 Services ≤ 1 % of a core", func(ix rowIndex) (string, bool, bool) {
		r, ok := ix.get(100000, "socklb")
		return fmt.Sprintf("%.2f %% over %.0f s", r.IdleCPUPercent, r.IdleSeconds), r.IdleCPUPercent <= 1, ok && r.IdleSeconds > 0
	}},
	{"BPF cost per connect at 100 000 Services ≤ 1 µs", func(ix rowIndex) (string, bool, bool) {
		r, ok := ix.get(100000, "socklb")
		return fmt.Sprintf("%.0f ns", r.BPFNsPerConnect), r.BPFNsPerConnect <= 1000, ok && r.BPFNsPerConnect > 0
	}},
	{"connection rate vs direct ≥ 0.95× at 1, 1 000 and 10 000 Services", func(ix rowIndex) (string, bool, bool) {
		fig, met := "", true
		for _, n := range []int{1, 1000, 10000} {
			r, ok1 := ix.get(n, "socklb")
			d, ok2 := ix.get(n, "direct")
			if !ok1 || !ok2 || d.ConnPerSec == 0 {
				return "", false, false
			}
			v := r.ConnPerSec / d.ConnPerSec
			fig += fmt.Sprintf("%s%.2f×", map[bool]string{true: "", false: ", "}[fig == ""], v)
			met = met && v >= 0.95
		}
		return fig, met, true
	}},
}

// churnVs judges socklb's churn CPU against one kube-proxy mode's.
func churnVs(peer string) func(rowIndex) (string, bool, bool) {
	return func(ix rowIndex) (string, bool, bool) {
		for _, r := range ix {
			if r.Peer != "socklb" || r.Error != "" || r.ChurnCPUSec == 0 {
				continue
			}
			k, ok := ix.get(r.Services, peer)
			if !ok || k.ChurnCPUSec == 0 {
				return "", false, false
			}
			v := r.ChurnCPUSec / k.ChurnCPUSec
			return fmt.Sprintf("%.3f× (%.2f s against %.2f s at %d Services)", v, r.ChurnCPUSec, k.ChurnCPUSec, r.Services),
				v <= 0.1, true
		}
		return "", false, false
	}
}

// writeTargets prints each target as met, missed or not measured.
func writeTargets(w io.Writer, res *Results) {
	ix := rowIndex{}
	for _, r := range res.Rows {
		ix[fmt.Sprint(r.Services, " ", r.Peer)] = r
	}
	fmt.Fprintln(w, "\nTargets")
	for _, t := range targets {
		fig, met, ok := t.judge(ix)
		verdict := map[bool]string{true: "met", false: "MISSED"}[met]
		if !ok {
			verdict, fig = "not measured", "-"
		}
		fmt.Fprintf(w, "  %-13s %s: %s\n", verdict, t.what, fig)
	}
	var short []string
	for _, r := range res.Rows {
		if r.Changes > 0 && r.Changes < res.ChangesAsked {
			short = append(short, fmt.Sprintf("%s at %d Services: %d changes", r.Peer, r.Services, r.Changes))
		}
	}
	if len(short) > 0 {
		slices.Sort(short)
		fmt.Fprintf(w, "\nChange latency of fewer than %d changes (the phase's time budget ran out): %v\n", res.ChangesAsked, short)
	}
}

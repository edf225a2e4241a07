package main

import (
	"strings"
	"testing"
)

func TestTargetsJudgeTheRun(t *testing.T) {
	res := &Results{ChangesAsked: 100, Rows: []Row{
		{Services: 1, Peer: "direct", ConnPerSec: 100},
		{Services: 1, Peer: "socklb", ConnPerSec: 96},
		{Services: 1000, Peer: "direct", ConnPerSec: 100},
		{Services: 1000, Peer: "socklb", ConnPerSec: 99},
		{Services: 10000, Peer: "direct", ConnPerSec: 100},
		{Services: 10000, Peer: "socklb", ConnPerSec: 94, RSSMiB: 180, ChurnCPUSec: 1, ChurnProbes: 9, ChurnChangeP99Ms: 12},
		{Services: 10000, Peer: "kube-proxy-nftables", RSSMiB: 300, ChurnCPUSec: 5},
		{Services: 10000, Peer: "kube-proxy-iptables", RSSMiB: 400, ChurnCPUSec: 20, Changes: 40},
		{Services: 100000, Peer: "socklb", RSSMiB: 450, ChangeP99Ms: 4, Changes: 100, IdleCPUPercent: 1.5, IdleSeconds: 300},
		{Services: 100000, Peer: "kube-proxy-nftables", Error: "0 of 22 sampled Services answered"},
	}}
	var b strings.Builder
	writeTargets(&b, res)
	out := b.String()
	for _, want := range []string{
		"met           agent RSS at 100 000 Services ≤ 500 MiB: 450 MiB",
		"MISSED        agent RSS at 10 000 Services ≤ ½ of kube-proxy nftables': 180 MiB against 300 MiB: 0.60×",
		"met           change latency p99 at 100 000 Services < 10 ms: 4.0 ms",
		"met           churn CPU ≤ 0.1× kube-proxy iptables': 0.050×",
		"MISSED        churn CPU ≤ 0.1× kube-proxy nftables': 0.200×",
		"met           change latency p99 during the churn < 20 ms: 12.0 ms at 10000 Services",
		"MISSED        idle CPU at 100 000 Services ≤ 1 % of a core: 1.50 %",
		"not measured  BPF cost per connect at 100 000 Services ≤ 1 µs: -",
		"MISSED        connection rate vs direct ≥ 0.95× at 1, 1 000 and 10 000 Services: 0.96×, 0.99×, 0.94×",
		"kube-proxy-iptables at 10000 Services: 40 changes",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

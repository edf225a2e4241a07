package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// report prints the table and writes BENCHMARKS.md and benchmarks.json.
func report(c config, res *Results) error {
	var b strings.Builder
	writeTables(&b, res)
	fmt.Print(b.String())
	if c.quick {
		fmt.Println("(--quick: results not written)")
		return nil
	}
	if err := os.MkdirAll(c.outDir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.outDir, "benchmarks.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# Benchmarks: socklb vs kube-proxy\n\n")
	fmt.Fprintf(&md, "Made by `%s` on %s (run took %s).\n\n", res.Command, res.Date, res.Took)
	fmt.Fprintf(&md, "- Machine: %s\n- Kernel: %s\n- Kubernetes components: v1.37.2 (kube-apiserver, etcd, kube-proxy built from the Go module proxy)\n\n", res.Machine, res.Kernel)
	md.WriteString(method)
	md.WriteString("\n## Results\n\n```\n")
	md.WriteString(b.String())
	md.WriteString("```\n")
	if len(res.Notes) > 0 {
		md.WriteString("\n## Notes\n\n")
		for _, n := range res.Notes {
			fmt.Fprintf(&md, "- %s\n", n)
		}
	}
	return os.WriteFile(filepath.Join(c.outDir, "BENCHMARKS.md"), []byte(md.String()), 0o644)
}

const method = `## Method

One run, one machine: etcd and kube-apiserver run inside a private network
namespace; N Services (ClusterIP, port 80) each get a hand-made EndpointSlice
with the same 10 endpoint addresses (name servers on the namespace's
loopback); Service i targets port 20000 + i mod 100, so that Services do not
all share one backend port (with one, kube-proxy's conntrack drops SYNs on
reply-tuple clashes between Services, which real clusters rarely provoke). The
peers are measured one after another against the same objects:

- **direct**: clients connect to the backends' addresses (the floor);
- **socklb**: the agent (` + "`--source=kubernetes`" + `) attached to a child
  cgroup that the clients join;
- **kube-proxy iptables / nftables**: the real kube-proxy v1.37.2 inside the
  namespace; its rules live only there. In iptables mode its iptables commands
  are iptables-legacy (x_tables), as with kube-proxy's own image on hosts
  without nft rules (` + "`--iptables-backend=nft`" + ` picks Debian's
  iptables-nft instead: in an earlier run it had not finished restoring the
  320 010 NAT rules of 10 000 Services after 10 minutes).

Short connections: connect, a small request, the response, close; 2 parallel
clients, each picking a random Service for every connection. Bulk: one long
connection writing to a sink. Cold start: from starting the peer to a sample
of 22 Services (the first, the last and 20 random) answering; for socklb also
the agent's own first sync (model + map writes), from its log. Change: an
EndpointSlice update accepted by the API server → the first connection that
shows it, alternating a random Service between a marker pod and its 10 pods,
changes 150 ms apart so each is measured alone (kube-proxy's own minimum
sync interval, 1 s by default, still applies to it).
Churn (` + "`--churn=N`" + `, at one of the sizes): for ` + "`--churn-for`" + ` (1 minute),
` + "`--churn-rate`" + ` (50) EndpointSlice updates per second, each giving a random
Service a random half of its pods (endpoints added and removed), while a
prober measures the change latency as above on 20 Services the churn leaves
alone; CPU is the peer's user + system time from /proc (kube-proxy's with the
iptables-restore and nft children it waited for). Idle (` + "`--idle=D`" + `): socklb's
CPU over D at the largest size with nothing changing, its periodic full
reconciliation included. The Services are created by 64 parallel writers
with no client-side rate limit (the notes give the rate reached); socklb's
service map is sized for the largest N (` + "`--service-map-entries`" + `).
BPF cost: run time per call of socklb's connect4 program, from the kernel's
BPF statistics (BPF_ENABLE_STATS) during the short-connection run.
Figures on a shared 2-core machine are noisy; compare peers within a run,
as ratios.
`

func writeTables(w io.Writer, res *Results) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "services\tpeer\tconn/s\tvs direct\tp50 µs\tp99 µs\tp99 vs direct\tfailed\tbulk MiB/s\tcold start ms\tagent sync ms\tchange p50 ms\tchange p99 ms\tRSS MiB\tBPF ns/connect\t")
	direct := map[int]Row{}
	for _, r := range res.Rows {
		if r.Peer == "direct" {
			direct[r.Services] = r
		}
	}
	for _, r := range res.Rows {
		if r.Error != "" {
			fmt.Fprintf(tw, "%d\t%s\tfailed: %s\t\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Services, r.Peer, r.Error)
			continue
		}
		d := direct[r.Services]
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%.0f\t%.0f\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Services, r.Peer, r.ConnPerSec, ratio(r.ConnPerSec, d.ConnPerSec), r.P50us, r.P99us,
			ratio(r.P99us, d.P99us), r.Failed, r.BulkMBps, opt(r.ColdStartMs, "%.0f"), opt(r.AgentSyncMs, "%.0f"),
			opt(r.ChangeP50Ms, "%.1f"), opt(r.ChangeP99Ms, "%.1f"), opt(r.RSSMiB, "%.0f"), opt(r.BPFNsPerConnect, "%.0f"))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nsocklb against each kube-proxy mode (ratio > 1: socklb better)")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "services\tvs\tconn/s\tp99 latency\tcold start\tchange p99\tRSS\t")
	byKey := map[string]Row{}
	for _, r := range res.Rows {
		byKey[fmt.Sprint(r.Services, r.Peer)] = r
	}
	for _, r := range res.Rows {
		if r.Peer != "socklb" || r.Error != "" {
			continue
		}
		for _, peer := range []string{"kube-proxy-iptables", "kube-proxy-nftables"} {
			k, ok := byKey[fmt.Sprint(r.Services, peer)]
			if !ok || k.Error != "" {
				continue
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Services, peer,
				ratio(r.ConnPerSec, k.ConnPerSec), ratio(k.P99us, r.P99us), ratio(k.ColdStartMs, r.ColdStartMs),
				ratio(k.ChangeP99Ms, r.ChangeP99Ms), ratio(k.RSSMiB, r.RSSMiB))
		}
	}
	tw.Flush()
	writeChurn(w, res)
	writeTargets(w, res)
}

// writeChurn prints the churn phase and the idle cost, where measured.
func writeChurn(w io.Writer, res *Results) {
	var socklb *Row
	churned := false
	for i, r := range res.Rows {
		if r.ChurnProbes > 0 {
			churned = true
			if r.Peer == "socklb" {
				socklb = &res.Rows[i]
			}
		}
	}
	if churned {
		fmt.Fprintln(w, "\nChurn: EndpointSlice updates of random Services while a prober measures the change latency")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "services\tpeer\tupdates/s\tfailed\tCPU s\tCPU % of a core\tsocklb CPU vs this\tprobes\tchange p50 ms\tchange p99 ms\t")
		for _, r := range res.Rows {
			if r.ChurnProbes == 0 {
				continue
			}
			vs := "-"
			if socklb != nil && socklb.Services == r.Services && r.ChurnCPUSec > 0 {
				vs = fmt.Sprintf("%.3f×", socklb.ChurnCPUSec/r.ChurnCPUSec)
			}
			fmt.Fprintf(tw, "%d\t%s\t%.1f\t%d\t%.2f\t%.1f\t%s\t%d\t%.1f\t%.1f\t\n", r.Services, r.Peer,
				r.ChurnUpdatesPerSec, r.ChurnFailed, r.ChurnCPUSec, 100*r.ChurnCPUSec/r.ChurnSeconds,
				vs, r.ChurnProbes, r.ChurnChangeP50Ms, r.ChurnChangeP99Ms)
		}
		tw.Flush()
	}
	for _, r := range res.Rows {
		if r.IdleSeconds > 0 {
			fmt.Fprintf(w, "\nIdle: %s at %d Services, nothing changing, over %.0f s: %.2f %% of a core\n",
				r.Peer, r.Services, r.IdleSeconds, r.IdleCPUPercent)
		}
	}
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func opt(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

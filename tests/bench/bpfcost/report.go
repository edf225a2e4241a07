package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// report prints one table row per size and case: each hook's mean run
// time per call and its ratio to the committed programs' at that size.
func report(out io.Writer, c config, res *results) {
	fmt.Fprintf(out, "BPF run time per call, from the kernel's statistics (run_time_ns / run_cnt)\n\n")
	fmt.Fprintf(out, "  command: %s\n", c.command)
	fmt.Fprintf(out, "  kernel:  %s\n", kernelRelease())
	fmt.Fprintf(out, "  %d %s connects per size and case, in %d alternating rounds; %d backends per Service;\n",
		c.connects/c.rounds*c.rounds, strings.ToUpper(c.proto), c.rounds, c.backends)
	fmt.Fprintf(out, "  service map %d entries, backend map %d (sized for the largest run)\n", res.svcEntries, res.beEntries)
	fmt.Fprintf(out, "  %s: the programs of this tree, connecting to Services\n", committed)
	fmt.Fprintf(out, "  %s: the same programs, connecting to the backends' own addresses (the lookup misses)\n", miss)
	fmt.Fprintf(out, "  %s: programs that only return 1, connecting to the backends (what the statistics cost)\n", floor)
	for _, v := range c.variants {
		if v.path != "" {
			fmt.Fprintf(out, "  %s: %s\n", v.name, v.path)
		}
	}
	fmt.Fprintln(out)

	fmt.Fprintf(out, "| Services | case |")
	for _, s := range res.hooks {
		fmt.Fprintf(out, " %s ns | × %s |", strings.TrimPrefix(s, "cgroup/"), committed)
	}
	fmt.Fprintf(out, " connects/s | failed | wrong peer |\n|---:|---|")
	for range res.hooks {
		fmt.Fprintf(out, "---:|---:|")
	}
	fmt.Fprintf(out, "---:|---:|---:|\n")
	for _, sr := range res.sizes {
		for _, v := range c.variants {
			vr := sr.byVar[v.name]
			fmt.Fprintf(out, "| %d | %s |", sr.services, v.name)
			for _, s := range res.hooks {
				ns, base := perCall(vr.hooks[s]), perCall(sr.byVar[committed].hooks[s])
				switch {
				case ns == 0:
					fmt.Fprintf(out, " – | – |")
				case base == 0:
					fmt.Fprintf(out, " %.0f | – |", ns)
				default:
					fmt.Fprintf(out, " %.0f | %.2f |", ns, ns/base)
				}
			}
			fmt.Fprintf(out, " %.0f | %d | %d |\n", float64(vr.connects)/vr.wall.Seconds(), vr.failed, vr.wrongPeer)
		}
	}
}

func perCall(st *ebpf.ProgramStats) float64 {
	if st == nil || st.RunCount == 0 {
		return 0
	}
	return float64(st.Runtime.Nanoseconds()) / float64(st.RunCount)
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

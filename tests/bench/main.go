// Command bench measures socklb against the real kube-proxy (iptables and
// nftables modes) and against connecting to the backends directly, in one
// run on one machine: the same Services in the same real API server, the
// same backends, the same clients.
//
// Everything runs inside a private network namespace made for the run:
// etcd, kube-apiserver, kube-proxy and every rule it writes, the backends
// (name servers on the namespace's loopback) and the clients. socklb's
// programs attach to a child cgroup that only the benchmark's clients join.
// The host's iptables and nftables rulesets are compared before and after.
//
//	go run ./tests/bench [--quick] [--out docs]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/socklb/socklb/tests/bench/kubeproxy"
)

// config is what the flags choose.
type config struct {
	quick      bool
	sizes      []int // service counts
	socklbOnly []int // larger sizes measured for socklb (and direct) only
	endpoints  int   // endpoints per service
	parallel   int   // client goroutines
	duration   time.Duration
	bulkBytes  int64
	changes    int    // endpoint changes measured per size and peer
	command    string // how to rerun this, for the report
	peers      []string
	backend    kubeproxy.Backend // iptables flavour for kube-proxy-iptables
	// churnAt is the size at which the churn phase runs (0: none):
	// churnRate EndpointSlice updates per second for churnFor.
	churnAt   int
	churnRate int
	churnFor  time.Duration
	// idleFor is how long socklb's idle CPU is measured at the largest
	// size (0: not measured).
	idleFor time.Duration
	// profileDir, if set, receives CPU profiles of socklb's agent
	// during the churn and idle phases.
	profileDir string
	outDir     string
	agentBin   string
}

// allPeers are the columns of a full run, in the order they are measured.
var allPeers = []string{"direct", "socklb", "kube-proxy-iptables", "kube-proxy-nftables"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	var c config
	flag.BoolVar(&c.quick, "quick", false, "small sizes and short runs (under 3 minutes), for development")
	flag.StringVar(&c.outDir, "out", "docs", "directory for BENCHMARKS.md and benchmarks.json")
	flag.StringVar(&c.agentBin, "agent", "bin/socklb-agent", "socklb agent binary")
	large := flag.Int("socklb-only", 0, "also measure direct and socklb at this many Services (e.g. 100000; loading them into the API server takes long)")
	sizes := flag.String("sizes", "", "comma-separated Service counts instead of the default ones (for development)")
	peers := flag.String("peers", strings.Join(allPeers, ","), "comma-separated peers to measure (for development)")
	backend := flag.String("iptables-backend", string(kubeproxy.BackendLegacy), "iptables flavour for kube-proxy in iptables mode: legacy or nft")
	flag.IntVar(&c.churnAt, "churn", 0, "also run the churn phase at this many Services (one of the sizes; e.g. 10000)")
	flag.IntVar(&c.churnRate, "churn-rate", 50, "EndpointSlice updates per second in the churn phase")
	flag.DurationVar(&c.churnFor, "churn-for", time.Minute, "how long the churn phase runs for each peer")
	flag.StringVar(&c.profileDir, "profile", "", "write CPU profiles of socklb's agent during the churn and idle phases into this directory")
	flag.DurationVar(&c.idleFor, "idle", 0, "measure socklb's CPU at rest for this long at the largest size (e.g. 5m)")
	flag.Parse()
	c.endpoints, c.parallel = 10, 2
	if c.quick {
		c.sizes, c.duration, c.bulkBytes, c.changes = []int{1, 1000}, time.Second, 64<<20, 10
	} else {
		c.sizes, c.duration, c.bulkBytes, c.changes = []int{1, 1000, 10000}, 5*time.Second, 512<<20, 100
	}
	if *large > 0 {
		c.socklbOnly = []int{*large}
	}
	if *sizes != "" {
		c.sizes = nil
		for _, f := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return fmt.Errorf("--sizes: %q is not a positive number", f)
			}
			c.sizes = append(c.sizes, n)
		}
	}
	if c.churnAt > 0 && !slices.Contains(append(slices.Clone(c.sizes), c.socklbOnly...), c.churnAt) {
		return fmt.Errorf("--churn=%d: not one of the sizes measured", c.churnAt)
	}
	if c.churnRate < 1 || c.churnRate > 1000 || c.churnFor < 0 || c.idleFor < 0 {
		return errors.New("--churn-rate wants 1 to 1000 per second, --churn-for and --idle a duration ≥ 0")
	}
	for _, p := range strings.Split(*peers, ",") {
		if p = strings.TrimSpace(p); !slices.Contains(allPeers, p) {
			return fmt.Errorf("--peers: unknown peer %q (want some of %s)", p, strings.Join(allPeers, ", "))
		}
		c.peers = append(c.peers, p)
	}
	c.command = "make bench"
	if c.quick {
		c.command += " QUICK=1"
	}
	var extra []string
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "quick" && f.Name != "agent" && f.Name != "out" {
			extra = append(extra, fmt.Sprintf("--%s=%s", f.Name, f.Value))
		}
	})
	if len(extra) > 0 {
		c.command += fmt.Sprintf(" BENCHFLAGS='%s'", strings.Join(extra, " "))
	}
	switch c.backend = kubeproxy.Backend(*backend); c.backend {
	case kubeproxy.BackendLegacy, kubeproxy.BackendNFT:
	default:
		return fmt.Errorf("--iptables-backend: %q, want %q or %q", *backend, kubeproxy.BackendLegacy, kubeproxy.BackendNFT)
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tb, err := newProgramTB(ctx, log)
	if err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(errFatal)
			if !ok {
				tb.runCleanups()
				panic(fmt.Sprintf("%v\n%s", r, debug.Stack()))
			}
			err = errors.New(f.msg)
		}
		tb.runCleanups()
	}()

	start := time.Now()
	res, err := measure(ctx, tb, c, log)
	if err != nil {
		return err
	}
	res.Took = time.Since(start).Round(time.Second).String()
	return report(c, res)
}

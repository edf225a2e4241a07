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
	"syscall"
	"time"
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
	changes    int // endpoint changes measured per size and peer
	outDir     string
	agentBin   string
}

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

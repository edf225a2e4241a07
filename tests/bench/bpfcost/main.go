// Command bpfcost measures what socklb's socket programs cost the kernel per
// call, from the kernel's own BPF run-time statistics (run_time_ns and
// run_cnt, as `kernel.bpf_stats_enabled` turns on), at several numbers of
// Services. Run it as root.
//
// It builds everything it uses and removes it again: a network namespace
// whose loopback carries the backends (one listener on 0.0.0.0 answers for
// every 127.x.y.z backend address), a child cgroup that only this process
// joins, and a private bpffs for the pins. The programs are loaded with
// pkg/loader and the maps filled through pkg/maps: N Services, each with
// --backends backends of its own. Short connects (socket, connect,
// getpeername as Go's Dial does, close with an RST) from a thread inside
// the namespace go to random Services; getpeername must show the Service.
//
// Each size measures three cases: "socklb" (the programs of this tree,
// connecting to Services), "socklb, no Service" (the same programs,
// connecting to the backends' own addresses, which every connect that is
// not for a Service pays) and "empty" (programs that only return 1: what
// the statistics themselves cost). --variant adds other builds of
// bpf/socklb.c whose maps are compatible, to try a change before making it;
// include a plain rebuild of bpf/socklb.c as one of them to see how much a
// program differs from itself when loaded that way. The cases take turns on
// the same maps (each cgroup link gets the case's program in place), in
// --rounds alternating rounds, and the table gives each one's ratio to
// socklb, so the noise of a shared machine hits every row alike.
//
//	go run ./tests/bench/bpfcost --services 1,1000,10000,100000 --connects 20000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bpfcost: %v\n", err)
		// The verifier's log, which %v shortens to its last line.
		if ve, ok := errors.AsType[*ebpf.VerifierError](err); ok {
			fmt.Fprintf(os.Stderr, "%+v\n", ve)
		}
		os.Exit(1)
	}
}

// config is what the flags choose.
type config struct {
	sizes    []int
	connects int // per size and variant
	rounds   int
	backends int // per Service
	entries  int // service and backend map size; 0: as needed
	proto    string
	variants []variant
	command  string
}

// variant is one set of programs to measure; the committed one has no path.
type variant struct {
	name, path string
}

type variantFlag []variant

func (v *variantFlag) String() string { return fmt.Sprint(*v) }

func (v *variantFlag) Set(s string) error {
	name, path, ok := strings.Cut(s, "=")
	if !ok || name == "" || path == "" {
		return errors.New("want NAME=PATH.o")
	}
	if name == committed || name == miss || name == floor ||
		slices.ContainsFunc(*v, func(o variant) bool { return o.name == name }) {
		return fmt.Errorf("variant name %q is taken", name)
	}
	*v = append(*v, variant{name: name, path: path})
	return nil
}

func run() error {
	var (
		c        config
		sizes    string
		variants variantFlag
	)
	flag.StringVar(&sizes, "services", "1,1000,10000", "comma-separated numbers of Services, measured in this order")
	flag.IntVar(&c.connects, "connects", 20000, "connects per size and variant")
	flag.IntVar(&c.rounds, "rounds", 10, "alternations of the cases per size")
	flag.IntVar(&c.backends, "backends", 10, "backends per Service")
	flag.IntVar(&c.entries, "map-entries", 0, "size of the service and backend maps (default: bpf/socklb.c's, or what the largest size needs)")
	flag.StringVar(&c.proto, "proto", "tcp", "tcp or udp (connected UDP)")
	flag.Var(&variants, "variant", "NAME=PATH.o: another build of bpf/socklb.c with compatible maps, measured alongside (repeatable)")
	flag.Parse()
	for f := range strings.SplitSeq(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("--services: %q is not a positive number", f)
		}
		if len(c.sizes) > 0 && n <= c.sizes[len(c.sizes)-1] {
			return errors.New("--services: give the sizes in increasing order")
		}
		c.sizes = append(c.sizes, n)
	}
	switch {
	case c.connects < c.rounds || c.rounds < 1:
		return errors.New("--connects must be at least --rounds, which must be positive")
	case c.backends < 1 || c.backends > maxBackends:
		return fmt.Errorf("--backends: want 1..%d", maxBackends)
	case c.sizes[len(c.sizes)-1]*c.backends > maxBackendAddrs:
		return fmt.Errorf("services × backends may be at most %d", maxBackendAddrs)
	case c.proto != "tcp" && c.proto != "udp":
		return fmt.Errorf("--proto: %q, want tcp or udp", c.proto)
	}
	c.variants = append([]variant{{name: committed}, {name: miss}, {name: floor}}, variants...)
	c.command = "go run ./tests/bench/bpfcost " + strings.Join(os.Args[1:], " ")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := measure(ctx, c)
	if err != nil {
		return err
	}
	report(os.Stdout, c, res)
	return nil
}

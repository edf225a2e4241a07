// Command leastconn compares socklb's two balancing policies, random (as
// kube-proxy) and least-connections (the power of two choices over the
// open connections the sock_ops program counts), on backends of uneven
// speed. Run it as root.
//
// It builds everything it uses and removes it again: a network namespace
// with --backends backends on 198.18.0.x:8080, a child cgroup that only
// this process joins, a private bpffs for the pins. One backend holds
// each connection --slow times longer than the others (--hold). For each
// policy in turn, --clients clients open --connections connections in all
// at a steady rate (--rate per second), each held until the backend
// closes it; the backends' open connections are sampled every 10 ms in
// the steady state (from one slow hold after the start until the last
// connection is opened). The table gives, per policy, the peak share of
// open connections held by the slow backend and the peak and mean of
// max/mean open connections per backend. Both policies run in one invocation, on the same datapath, in
// --rounds alternating rounds.
//
//	go run ./tests/bench/leastconn --connections 2000 --clients 4
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/reconciler"
)

type config struct {
	backends, clients, connections, rounds int
	rate                                   float64
	hold                                   time.Duration
	slow                                   int
}

func main() {
	var c config
	flag.IntVar(&c.backends, "backends", 5, "backends of the Service")
	flag.IntVar(&c.clients, "clients", 4, "clients opening connections at the same time")
	flag.IntVar(&c.connections, "connections", 2000, "connections per policy and round, over all clients")
	flag.Float64Var(&c.rate, "rate", 200, "connections opened per second, over all clients")
	flag.DurationVar(&c.hold, "hold", 200*time.Millisecond, "how long a fast backend holds a connection")
	flag.IntVar(&c.slow, "slow", 10, "how many times longer the slow backend holds one")
	flag.IntVar(&c.rounds, "rounds", 2, "alternating rounds of both policies")
	flag.Parse()
	if c.backends < 2 || c.backends > 200 || c.clients < 1 || c.connections < c.clients || c.rate <= 0 ||
		c.hold <= 0 || c.slow < 1 || c.rounds < 1 {
		fmt.Fprintln(os.Stderr, "leastconn: want --backends 2..200, --clients ≥ 1, --connections ≥ --clients, --rate > 0, --hold > 0, --slow ≥ 1, --rounds ≥ 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "leastconn: %v\n", err)
		os.Exit(1)
	}
	report(os.Stdout, c, res)
}

// result is one policy's figures over its rounds.
type result struct {
	policy     lb.Policy
	slowPeak   float64 // peak share of open connections on the slow backend
	ratioPeak  float64 // peak of max/mean open per backend
	ratioMean  float64 // time average of max/mean open per backend
	maxOpen    int     // most open connections on one backend at a sample
	failed     int
	samples    int
	ratioTotal float64
}

const (
	vip  = "198.19.0.10"
	port = 8080
)

func backendAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}), port)
}

func run(ctx context.Context, c config) (_ []*result, err error) {
	if err := sandbox.CheckPrivileges(); err != nil {
		return nil, err
	}
	var undo sandbox.Undo
	defer func() { err = errors.Join(err, undo.Run()) }()
	ns, rmNS, err := sandbox.CreateNetns("socklb-leastconn-")
	if err != nil {
		return nil, err
	}
	undo.Add(rmNS)
	cg, rmCg, err := sandbox.CreateCgroup("socklb-leastconn-")
	if err != nil {
		return nil, err
	}
	undo.Add(rmCg)
	fs, rmFS, err := sandbox.CreateBPFFS("socklb-leastconn-bpffs-")
	if err != nil {
		return nil, err
	}
	undo.Add(rmFS)
	pins := filepath.Join(fs, "socklb")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dp, err := loader.Load(loader.Options{BPFFSPath: pins, CgroupPath: cg.Path(), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	undo.Add(func() error { return errors.Join(dp.Close(), loader.Cleanup(pins, nil)) })
	if !dp.HasOutcomes() {
		return nil, errors.New("this kernel cannot run the sock_ops program: least-connections would be random")
	}

	open := make([]atomic.Int64, c.backends)
	for i := range c.backends {
		hold := c.hold
		if i == 0 {
			hold *= time.Duration(c.slow)
		}
		stopServe, err := serve(ns, backendAddr(i), hold, &open[i])
		if err != nil {
			return nil, err
		}
		undo.Add(stopServe)
	}
	restore, err := cg.EnterSelf()
	if err != nil {
		return nil, err
	}
	undo.Add(restore)

	rec := reconciler.New(maps.New(&dp.Maps), log)
	results := []*result{{policy: lb.PolicyRandom}, {policy: lb.PolicyLeastConnections}}
	for r := range c.rounds {
		for i := range results {
			res := results[(i+r)%len(results)]
			if err := publish(rec, c, res.policy); err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "round %d: %s\n", r+1, res.policy)
			if err := round(ctx, ns, c, open, res); err != nil {
				return nil, err
			}
		}
	}
	for _, res := range results {
		if res.samples > 0 {
			res.ratioMean = res.ratioTotal / float64(res.samples)
		}
	}
	return results, nil
}

func publish(rec *reconciler.Reconciler, c config, p lb.Policy) error {
	s := lb.Service{
		Frontend: lb.Frontend{Addr: netip.MustParseAddr(vip), Port: 80, Proto: lb.TCP},
		Name:     types.NamespacedName{Namespace: "bench", Name: "web"},
		Policy:   p,
	}
	for i := range c.backends {
		b := backendAddr(i)
		s.Backends = append(s.Backends, lb.Backend{Addr: b.Addr(), Port: b.Port()})
	}
	_, err := rec.Apply(lb.State{Services: []lb.Service{s}})
	return err
}

// serve listens on addr in ns and holds every connection for hold, then
// closes it; open counts the connections it holds.
func serve(ns *sandbox.Netns, addr netip.AddrPort, hold time.Duration, open *atomic.Int64) (func() error, error) {
	if err := ns.AddAddr(netip.PrefixFrom(addr.Addr(), 32)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, err
	}
	l, err := ns.Listen("tcp4", addr.String())
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			open.Add(1)
			wg.Go(func() {
				defer open.Add(-1)
				defer c.Close()
				select {
				case <-time.After(hold):
				case <-done:
				}
			})
		}
	})
	return func() error {
		close(done)
		err := l.Close()
		wg.Wait()
		return err
	}, nil
}

// round opens c.connections connections at c.rate from c.clients clients
// and samples the open connections until every one is closed.
func round(ctx context.Context, ns *sandbox.Netns, c config, open []atomic.Int64, res *result) error {
	var wg sync.WaitGroup
	var failed, opened atomic.Int64
	per := c.connections / c.clients
	start := time.Now()
	// Samples count in the steady state only: after the slow backend's
	// first connections could have closed, while connections are still
	// being opened (the ramp and the drain say nothing of the policy).
	steadyFrom := start.Add(c.hold * time.Duration(c.slow))
	total := int64(per * c.clients)
	interval := time.Duration(float64(time.Second) * float64(c.clients) / c.rate)
	for k := range c.clients {
		wg.Go(func() {
			// Spread the clients over one interval.
			next := time.Now().Add(interval * time.Duration(k) / time.Duration(c.clients))
			var conns sync.WaitGroup
			for range per {
				time.Sleep(time.Until(next))
				next = next.Add(interval)
				if ctx.Err() != nil {
					break
				}
				conn, err := ns.Dial(ctx, "tcp4", vip+":80")
				opened.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				conns.Go(func() {
					defer conn.Close()
					_, _ = io.Copy(io.Discard, conn) // until the backend closes it
				})
			}
			conns.Wait()
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-finished:
			res.failed += int(failed.Load())
			return ctx.Err()
		case <-tick.C:
		}
		if time.Now().Before(steadyFrom) || opened.Load() >= total {
			continue
		}
		sum, most := int64(0), int64(0)
		for i := range open {
			n := open[i].Load()
			sum += n
			most = max(most, n)
		}
		if sum == 0 {
			continue
		}
		res.samples++
		res.slowPeak = max(res.slowPeak, float64(open[0].Load())/float64(sum))
		ratio := float64(most) / (float64(sum) / float64(len(open)))
		res.ratioPeak = max(res.ratioPeak, ratio)
		res.ratioTotal += ratio
		res.maxOpen = max(res.maxOpen, int(most))
	}
}

func report(w io.Writer, c config, results []*result) {
	fmt.Fprintf(w, "%d backends (one holds each connection %d× longer: %v vs %v), %d clients, %d connections per policy and round at %.0f/s, %d rounds\n\n",
		c.backends, c.slow, c.hold*time.Duration(c.slow), c.hold, c.clients, c.connections, c.rate, c.rounds)
	fmt.Fprintln(w, "| policy | slow backend's peak share of open connections | max/mean open per backend: peak | mean | most open on one backend | failed connects |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for _, r := range results {
		fmt.Fprintf(w, "| %s | %.1f %% | %.2f | %.2f | %d | %d |\n", r.policy, 100*r.slowPeak, r.ratioPeak, r.ratioMean, r.maxOpen, r.failed)
	}
	fmt.Fprintf(w, "\ncommand: go run ./tests/bench/leastconn %s\n", strings.Join(os.Args[1:], " "))
}

// Command node-bin makes sure every binary a test node runs is built and
// cached, or found on the host (see package nodebuild), so CI can build
// them before `go test` runs under its timeout. It prints each part with
// what it took, then every path, on stdout; the builds' progress goes to
// stderr.
//
//	go run ./tests/node/cmd/node-bin
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/socklb/socklb/tests/node/nodebuild"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "node-bin:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Minute)
	defer cancel()
	start := time.Now()
	bins, err := nodebuild.Ensure(ctx, os.Stderr)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, s := range bins.Steps {
		fmt.Fprintf(w, "%s\t%s\t%v\t%s\n", s.Name, s.State, s.Took.Round(10*time.Millisecond), s.Dir)
	}
	fmt.Fprintf(w, "total\t\t%v\t\n\n", time.Since(start).Round(10*time.Millisecond))
	for _, p := range bins.Paths() {
		fmt.Fprintf(w, "%s\t%s\n", p[0], p[1])
	}
	return w.Flush()
}

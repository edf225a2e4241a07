// Command conformance-bin makes sure what the conformance run needs is
// built and cached (see package conformance): e2e.test and agnhost from
// the e2ebin module, and agnhost's root filesystem, so that the build
// happens before `go test` runs under its timeout. It prints each part
// with what it took and where it is; the builds' progress goes to stderr.
//
//	go run ./tests/conformance/cmd/conformance-bin
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/socklb/socklb/tests/conformance"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-bin:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	state := func(built bool) string {
		if built {
			return "built"
		}
		return "cached"
	}
	start := time.Now()
	bins, err := conformance.EnsureBinaries(ctx, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "e2e.test, agnhost %s\t%s\t%v\t%s\n", bins.AgnhostVersion, state(bins.Built), time.Since(start).Round(10*time.Millisecond), bins.Dir)
	mid := time.Now()
	rootfs, err := conformance.EnsureRootfs(ctx, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "agnhost root filesystem\t%s\t%v\t%s\n", state(rootfs.Built), time.Since(mid).Round(10*time.Millisecond), rootfs.Path)
	fmt.Fprintf(w, "total\t\t%v\t\n", time.Since(start).Round(10*time.Millisecond))
	return w.Flush()
}

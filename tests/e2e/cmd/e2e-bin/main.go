// Command e2e-bin makes sure the Kubernetes binaries of the e2e tests are
// built and cached (see package kubebuild), so CI can build them before
// `go test` runs under its timeout. It prints the cache directory on
// stdout and the build's progress on stderr.
//
//	go run ./tests/e2e/cmd/e2e-bin
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/socklb/socklb/tests/e2e/kubebuild"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e-bin:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Minute)
	defer cancel()
	bins, err := kubebuild.Ensure(ctx, os.Stderr)
	if err != nil {
		return err
	}
	for _, p := range []string{bins.APIServer, bins.ControllerManager, bins.Etcd, bins.KubeProxy} {
		fmt.Fprintln(os.Stderr, p)
	}
	fmt.Println(bins.Dir)
	return nil
}

// Command socklb-agent runs socklb on one node: it loads the BPF programs,
// keeps the maps equal to the Services and EndpointSlices of its source, and
// offers inspect, cleanup and version for operators. It is the only part of
// socklb that reads flags, environment and config files.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRootCmd(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "socklb-agent:", err)
		os.Exit(1)
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root, _ := newRoot(stdout, stderr)
	return root
}

// newRoot also returns the viper behind the commands, for tests that add a
// command of their own to see the Config.
func newRoot(stdout, stderr io.Writer) (*cobra.Command, *viper.Viper) {
	v := viper.New()
	root := &cobra.Command{
		Use:           "socklb-agent",
		Short:         "eBPF socket-level load balancer for Kubernetes Services",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)

	f := root.PersistentFlags()
	addFlags(f)
	// Every source is checked before any command runs, and all of their
	// errors are reported at once: a typo must not leave a default (such
	// as the host's cgroup2 root) in force.
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		return errors.Join(checkFlags(f), checkEnv(f, os.Environ()), readConfigFile(v, f))
	}
	if err := v.BindPFlags(f); err != nil {
		panic(err) // flags defined just above: a bug, not input
	}
	v.SetEnvPrefix(strings.TrimSuffix(envPrefix, "_"))
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	// A variable that is set counts, also when empty: SOCKLB_HEALTH_ADDR=""
	// disables /healthz like --health-addr="" does, and an empty number is
	// an error rather than the default.
	v.AllowEmptyEnv(true)
	// The downward API's conventional name works too.
	if err := v.BindEnv("node-name", envName("node-name"), "NODE_NAME"); err != nil {
		panic(err) // constant arguments: a bug, not input
	}

	run := newRunCmd(v)
	root.AddCommand(run, newInspectCmd(v), newCleanupCmd(v), newVersionCmd())
	// `socklb-agent` alone means `socklb-agent run`.
	root.RunE = run.RunE
	return root, v
}

func newLogger(c Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	w = lockedWriter{w}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// logMu serialises the writes of every logger newLogger makes: run and its
// signal handler each make one on the same writer, and a handler locks
// only its own writes.
var logMu sync.Mutex

type lockedWriter struct{ w io.Writer }

func (l lockedWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return l.w.Write(p)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "socklb-agent %s (map layout v3)\n", version)
			return err
		},
	}
}

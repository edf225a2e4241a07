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
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Config is the agent's typed configuration, the same for every subcommand.
type Config struct {
	BPFFSPath    string
	CgroupPath   string
	Source       string
	ServicesFile string
	Kubeconfig   string
	NodeName     string
	// ServiceSelector is a label selector in kubectl's syntax; empty
	// selects every Service.
	ServiceSelector string
	HealthAddr      string
	MetricsAddr     string
	DestroyTCP      bool
	LogFormat       string
	LogLevel        slog.Level
	MinSync         time.Duration
	SyncBurst       int
}

const (
	sourceFile       = "file"
	sourceKubernetes = "kubernetes"
)

func main() {
	if err := newRootCmd(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "socklb-agent:", err)
		os.Exit(1)
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	v := viper.New()
	root := &cobra.Command{
		Use:           "socklb-agent",
		Short:         "eBPF socket-level load balancer for Kubernetes Services",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return readConfigFile(v)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)

	f := root.PersistentFlags()
	f.String("config", "", "YAML config file; its keys are the flag names")
	f.String("bpffs-path", loader.DefaultBPFFSPath, "directory on bpffs for socklb's pinned maps and links")
	f.String("cgroup-path", "", "cgroup v2 directory to attach to (default: the cgroup2 mount from /proc/mounts)")
	f.String("source", "", "where Services and EndpointSlices come from: kubernetes or file (default: file when --services-file is set, else kubernetes)")
	f.String("services-file", "", "multi-document YAML of v1 Services and discovery.k8s.io/v1 EndpointSlices (--source=file)")
	f.String("kubeconfig", "", "kubeconfig for --source=kubernetes (default: in-cluster config)")
	f.String("node-name", "", "this node's name, for node-local traffic policies and zones (env NODE_NAME)")
	f.String("service-selector", "", "only handle Services matching this label selector, e.g. 'env in (prod, qa), tier notin (frontend)'")
	f.String("health-addr", "127.0.0.1:9811", "address of /healthz and /readyz; empty disables")
	f.String("metrics-addr", "127.0.0.1:9810", "address of the Prometheus /metrics endpoint; empty disables")
	f.Bool("destroy-tcp", false, "also destroy TCP sockets connected to a backend that left its service (UDP ones always are)")
	f.String("log-format", "text", "log format: text or json")
	f.String("log-level", "info", "log level: debug, info, warn or error")
	f.Duration("min-sync-interval", time.Second/10, "minimum time between two map syncs (bursts of changes collapse)")
	f.Int("sync-burst", 2, "syncs allowed back to back before min-sync-interval applies")
	if err := v.BindPFlags(f); err != nil {
		panic(err) // flags defined just above: a bug, not input
	}
	v.SetEnvPrefix("SOCKLB")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	// The downward API's conventional name works too.
	if err := v.BindEnv("node-name", "SOCKLB_NODE_NAME", "NODE_NAME"); err != nil {
		panic(err) // constant arguments: a bug, not input
	}

	run := newRunCmd(v)
	root.AddCommand(run, newInspectCmd(v), newCleanupCmd(v), newVersionCmd())
	// `socklb-agent` alone means `socklb-agent run`.
	root.RunE = run.RunE
	return root
}

func readConfigFile(v *viper.Viper) error {
	path := v.GetString("config")
	if path == "" {
		return nil
	}
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	return nil
}

// loadConfig turns viper's view of flags, env and file into a Config.
func loadConfig(v *viper.Viper) (Config, error) {
	c := Config{
		BPFFSPath:       v.GetString("bpffs-path"),
		CgroupPath:      v.GetString("cgroup-path"),
		Source:          v.GetString("source"),
		ServicesFile:    v.GetString("services-file"),
		Kubeconfig:      v.GetString("kubeconfig"),
		NodeName:        v.GetString("node-name"),
		HealthAddr:      v.GetString("health-addr"),
		MetricsAddr:     v.GetString("metrics-addr"),
		ServiceSelector: v.GetString("service-selector"),
		LogFormat:       v.GetString("log-format"),
		MinSync:         v.GetDuration("min-sync-interval"),
		SyncBurst:       v.GetInt("sync-burst"),
	}
	var errs []error
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString("log-level"))); err != nil {
		errs = append(errs, fmt.Errorf("log-level: %w", err))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log-format %q: want text or json", c.LogFormat))
	}
	if c.Source == "" {
		c.Source = sourceKubernetes
		if c.ServicesFile != "" {
			c.Source = sourceFile
		}
	}
	if c.Source != sourceFile && c.Source != sourceKubernetes {
		errs = append(errs, fmt.Errorf("source %q: want %s or %s", c.Source, sourceKubernetes, sourceFile))
	}
	if c.Source == sourceFile && c.ServicesFile == "" {
		errs = append(errs, errors.New("--services-file is required with --source=file"))
	}
	if _, err := lb.ParseServiceSelector(c.ServiceSelector); err != nil {
		errs = append(errs, err)
	}
	if c.BPFFSPath == "" {
		errs = append(errs, errors.New("bpffs-path is empty"))
	}
	if c.MinSync < 0 {
		errs = append(errs, fmt.Errorf("min-sync-interval %s is negative", c.MinSync))
	}
	if c.SyncBurst < 1 {
		errs = append(errs, fmt.Errorf("sync-burst %d: want at least 1", c.SyncBurst))
	}
	return c, errors.Join(errs...)
}

func newLogger(c Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
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

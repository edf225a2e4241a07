package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/socklb/socklb/pkg/ejection"
	"github.com/socklb/socklb/pkg/filesource"
	"github.com/socklb/socklb/pkg/k8swatch"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/metrics"
	"github.com/socklb/socklb/pkg/nodeaddr"
	"github.com/socklb/socklb/pkg/reconciler"
)

// defaultBPFFSMount is mounted when the pin path lies under it and no bpffs
// is there yet, as on hosts whose init system does not mount it.
const defaultBPFFSMount = "/sys/fs/bpf"

func newRunCmd(v *viper.Viper) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Load the programs and keep the maps in sync (the default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(v)
			if err != nil {
				return err
			}
			ctx, stop := notifySignals(cmd.Context(), newLogger(c, cmd.ErrOrStderr()))
			defer stop()
			return run(ctx, c, cmd)
		},
	}
}

func run(ctx context.Context, c Config, cmd *cobra.Command) error {
	log := newLogger(c, cmd.ErrOrStderr())
	selector, err := lb.ParseServiceSelector(c.ServiceSelector)
	if err != nil {
		return err
	}
	// Everything that can fail on configuration fails before the kernel
	// is touched. The source pokes the syncer and the syncer reads the
	// source; syncer is set before any source runs, so trigger never sees
	// it nil.
	var syncer *reconciler.Syncer
	trigger := func() { syncer.Trigger() }
	src, runSource, client, err := newSource(c, selector, trigger, log)
	if err != nil {
		return err
	}
	// A missing capability is named here, not met as a bare EPERM later.
	// tests/caps_test.go turns the check off to show that the kernel
	// refuses each missing one too.
	if !c.SkipCapabilityCheck {
		if err := loader.CheckCapabilities(loader.Options{Logger: log}); err != nil {
			return err
		}
	}
	if c.CgroupPath == "" {
		root, err := loader.Cgroup2Mount()
		if err != nil {
			return err
		}
		c.CgroupPath = root
	}
	if root, err := loader.Cgroup2Mount(); err == nil && filepath.Clean(c.CgroupPath) == root {
		log.Info("attaching to the cgroup2 root: every socket on this host is load-balanced", "cgroup", root)
	}
	if strings.HasPrefix(filepath.Clean(c.BPFFSPath)+"/", defaultBPFFSMount+"/") {
		mounted, err := loader.EnsureBPFFS(defaultBPFFSMount)
		if err != nil {
			return err
		}
		if mounted {
			log.Info("mounted bpffs", "path", defaultBPFFSMount)
		}
	}

	// One writer per pin directory: wait while another agent (the pod
	// this one replaces) holds it; held until the agent ends.
	lock, err := loader.AcquireLock(ctx, c.BPFFSPath, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while waiting for the pin directory", "bpffs", c.BPFFSPath)
			return nil
		}
		return err
	}
	defer lock.Close()
	dp, err := loader.Prepare(loader.Options{
		BPFFSPath: c.BPFFSPath, CgroupPath: c.CgroupPath, Lock: lock, Logger: log,
		MaxServiceEntries: c.ServiceMapEntries, MaxBackendEntries: c.BackendMapEntries,
		EjectAfter: c.OutlierFailures,
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	if dp.MapsInUse() {
		// A restart with the same map layout: the new programs read what
		// the old ones did, and the reconciler restores its state from it.
		if err := dp.Attach(); err != nil {
			return err
		}
	} else {
		// The maps are new (first start, or an upgrade to a new layout):
		// a program switched to them now would find no service. The
		// programs attached before keep serving from their own maps until
		// the first sync has filled these.
		log.Info("the maps are new: the programs attach after the first sync")
	}

	addrs, err := nodeaddr.New(nodeaddr.Options{Logger: log.With("source", "netlink"), OnChange: trigger})
	if err != nil {
		return err
	}
	reg, syncMetrics := newRegistry(dp, log)
	destroy := newDestroyer(dp, c, syncMetrics, log)
	ejector, adjuster := newEjector(dp, c, reg, func() { syncer.TriggerNow() }, log)
	rec := reconciler.New(maps.New(&dp.Maps), log)
	syncer = reconciler.NewSyncer(rec,
		[]reconciler.Source{src, nodeAddrSource{addrs}},
		reconciler.SyncerOptions{
			MinInterval:       c.MinSync,
			Burst:             c.SyncBurst,
			ReconcileInterval: c.ReconcileInterval,
			Node:              lb.NodeInfo{Name: c.NodeName, Zone: c.NodeZone},
			ServiceSelector:   selector,
			OnDeparted:        destroy.Enqueue,
			Adjuster:          adjuster,
			// Without an ejector nothing would be ejected: frontends
			// do not claim it (nor pay its lookup).
			Defaults: lb.Defaults{OutlierDetection: c.Outlier && ejector != nil},
			OnSync: func(took time.Duration, st reconciler.Stats, err error) {
				frontends, backends := rec.Programmed()
				syncMetrics.Observe(metrics.SyncResult{Took: took, Frontends: frontends, Backends: backends,
					OverCapacity: len(st.OverCapacity), Err: err})
				for kind, n := range st.Drift.Counts() {
					syncMetrics.Repaired(kind, n)
				}
			},
		}, log)
	status := &agentStatus{
		synced:   syncer.HasSynced,
		inSync:   syncer.InSync,
		attached: dp.Attached,
		over:     syncer.OverCapacity,
	}
	if ejector != nil {
		status.ejected = ejector.Ejected
	}

	log.Info("socklb agent started", "version", version, "bpffs", c.BPFFSPath, "cgroup", c.CgroupPath,
		"source", c.Source, "node", c.NodeName, "service_selector", c.ServiceSelector,
		"service_map_entries", c.ServiceMapEntries, "backend_map_entries", c.BackendMapEntries,
		"reconcile_interval", c.ReconcileInterval, "outlier_detection", c.Outlier,
		"outlier_consecutive_failures", c.OutlierFailures)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return runSource(ctx) })
	g.Go(func() error { return addrs.Run(ctx) })
	g.Go(func() error { return syncer.Run(ctx) })
	g.Go(func() error { return attachAfterFirstSync(ctx, dp, syncer, log) })
	g.Go(func() error { return destroy.Run(ctx) })
	if ejector != nil {
		g.Go(func() error { return ejection.ReadEvents(ctx, dp.Maps.SocklbEventsV3, ejector.Report, log) })
	}
	var pods podClient
	if client != nil {
		keeper, runBypass, err := newBypass(c, client, dp, reg, log)
		if err != nil {
			return err
		}
		if keeper != nil {
			status.bypassed = keeper.Entries
			pods = keeper.Client
			g.Go(func() error { return runBypass(ctx) })
		}
	}
	g.Go(func() error { return checkDatapath(ctx, dp, c.ReconcileInterval, status, syncMetrics, log) })
	if c.HealthAddr != "" {
		g.Go(func() error {
			return serveHTTP(ctx, "health", c.HealthAddr, statusHandler(status, whyHandler(whyNode(dp, syncer), pods, maps.NewBypass(&dp.Maps).Has)), log)
		})
	}
	if c.MetricsAddr != "" {
		g.Go(func() error { return serveHTTP(ctx, "metrics", c.MetricsAddr, metricsHandler(reg, log), log) })
	}
	if c.PprofAddr != "" {
		g.Go(func() error { return serveHTTP(ctx, "pprof", c.PprofAddr, pprofHandler(), log) })
	}
	err = g.Wait()
	log.Info("socklb agent stopped; the datapath stays attached until `socklb-agent cleanup`")
	return err
}

// newSource builds the configured source and the function that runs it.
// The Kubernetes source also returns its client, for the bypass's pod
// watch; the file source returns none.
func newSource(c Config, selector labels.Selector, trigger func(), log *slog.Logger) (reconciler.Source, func(context.Context) error, kubernetes.Interface, error) {
	switch c.Source {
	case sourceFile:
		src, err := filesource.New(filesource.Options{
			Path:     c.ServicesFile,
			Logger:   log.With("source", sourceFile),
			OnChange: trigger,
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return src, src.Run, nil, nil
	case sourceKubernetes:
		restConfig, err := kubeConfig(c.Kubeconfig)
		if err != nil {
			return nil, nil, nil, err
		}
		client, err := kubernetes.NewForConfig(restConfig)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("kubernetes client: %w", err)
		}
		src, err := k8swatch.New(k8swatch.Options{
			Client:          client,
			NodeName:        c.NodeName,
			ServiceSelector: selector,
			Logger:          log.With("source", sourceKubernetes),
			OnChange:        trigger,
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return src, src.Run, client, nil
	}
	return nil, nil, nil, fmt.Errorf("source %q: want %s or %s", c.Source, sourceKubernetes, sourceFile)
}

// kubeConfig uses the kubeconfig file when one is given, else the
// in-cluster service account.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (outside a cluster, give --kubeconfig): %w", err)
	}
	return cfg, nil
}

// nodeAddrSource offers the node's addresses, for NodePort frontends.
type nodeAddrSource struct{ w *nodeaddr.Watcher }

func (s nodeAddrSource) Input() lb.Input {
	return lb.Input{Node: lb.NodeInfo{Addresses: s.w.Addresses()}}
}

func (s nodeAddrSource) HasSynced() bool { return s.w.HasSynced() }

package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/socklb/socklb/pkg/bypass"
	"github.com/socklb/socklb/pkg/k8swatch"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

// newBypass sets up the pod watch and the bypass map's keeper, and returns
// what runs them. Without a node name the agent cannot tell its pods, so
// nothing is bypassed (and a selector is an error).
func newBypass(c Config, client kubernetes.Interface, dp *loader.Datapath, reg *prometheus.Registry,
	log *slog.Logger) (*bypass.Keeper, func(context.Context) error, error) {
	nsSel, err := bypass.ParseSelector(c.BypassNamespaces)
	if err != nil {
		return nil, nil, err
	}
	podSel, err := bypass.ParseSelector(c.BypassPods)
	if err != nil {
		return nil, nil, err
	}
	if c.NodeName == "" {
		if c.Bypassing() {
			return nil, nil, errBypassNeedsNode
		}
		log.Warn("no node name (--node-name, $NODE_NAME): pods cannot be bypassed, the socklb.io/bypass annotation is ignored")
		return nil, nil, nil
	}
	var keeper *bypass.Keeper
	pods, err := k8swatch.NewPodSource(k8swatch.PodOptions{
		Client: client, NodeName: c.NodeName, Logger: log.With("source", "pods"),
		OnChange: func() { keeper.Trigger() },
	})
	if err != nil {
		return nil, nil, err
	}
	keeper, err = bypass.New(bypass.Options{
		Rules:      bypass.Rules{Namespaces: nsSel, Pods: podSel},
		CgroupRoot: c.CgroupPath,
		Pods:       pods.Pods,
		Pod:        pods.Pod,
		Namespace:  pods.NamespaceLabels,
		Synced:     pods.HasSynced,
		Table:      maps.NewBypass(&dp.Maps),
		Log:        log.With("job", "bypass"),
	})
	if err != nil {
		return nil, nil, err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "socklb_bypassed_pods",
		Help: "Pods of this node whose sockets socklb leaves alone (--bypass-*-selector, annotation socklb.io/bypass).",
	}, func() float64 { return float64(len(keeper.Entries())) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "socklb_bypass_unresolved_pods",
		Help: "Pods of this node chosen for bypass (or undecided: their namespace not seen yet) whose network namespace is not in the bypass map: starting, or one the agent cannot find or read (logged for a running pod).",
	}, func() float64 { return float64(keeper.Unresolved()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "socklb_bypass_synced",
		Help: "1 once the watches of this node's pods and of the namespaces have synced; until then no pod is bypassed.",
	}, func() float64 {
		if keeper.Synced() {
			return 1
		}
		return 0
	}))
	log.Info("bypass: watching this node's pods", "namespace_selector", c.BypassNamespaces, "pod_selector", c.BypassPods)
	return keeper, func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return pods.Run(ctx) })
		g.Go(func() error { return keeper.Run(ctx) })
		return g.Wait()
	}, nil
}

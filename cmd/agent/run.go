package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"golang.org/x/sync/errgroup"

	"github.com/socklb/socklb/pkg/filesource"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
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
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, c, cmd)
		},
	}
}

func run(ctx context.Context, c Config, cmd *cobra.Command) error {
	log := newLogger(c, cmd.ErrOrStderr())
	if c.Source != sourceFile {
		return fmt.Errorf("source %q: only %q is available in this version", c.Source, sourceFile)
	}
	if c.ServicesFile == "" {
		return errors.New("--services-file is required with --source=file")
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

	dp, err := loader.Load(loader.Options{BPFFSPath: c.BPFFSPath, CgroupPath: c.CgroupPath, Logger: log})
	if err != nil {
		return err
	}
	defer dp.Close()

	rec := reconciler.New(maps.New(&dp.Maps), log)
	// The source pokes the syncer, and the syncer reads the source; syncer
	// is set before src.Run starts, so OnChange never sees it nil.
	var syncer *reconciler.Syncer
	src, err := filesource.New(filesource.Options{
		Path:     c.ServicesFile,
		Logger:   log.With("source", "file"),
		OnChange: func() { syncer.Trigger() },
	})
	if err != nil {
		return err
	}
	syncer = reconciler.NewSyncer(rec, []reconciler.Source{src}, reconciler.SyncerOptions{
		MinInterval: c.MinSync,
		Burst:       c.SyncBurst,
	}, log)

	log.Info("socklb agent started", "version", version, "bpffs", c.BPFFSPath,
		"cgroup", c.CgroupPath, "source", c.Source, "services_file", c.ServicesFile)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return src.Run(ctx) })
	g.Go(func() error { return syncer.Run(ctx) })
	err = g.Wait()
	log.Info("socklb agent stopped; the datapath stays attached until `socklb-agent cleanup`")
	return err
}

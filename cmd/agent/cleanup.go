package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/loader"
)

func newCleanupCmd(v *viper.Viper) *cobra.Command {
	return &cobra.Command{
		Use:   "cleanup",
		Short: "Detach the programs and unpin every map (stops load balancing)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(v)
			if err != nil {
				return err
			}
			log := newLogger(c, cmd.ErrOrStderr())
			if err := loader.Cleanup(c.BPFFSPath, log); err != nil {
				return err
			}
			log.Info("socklb removed", "bpffs", c.BPFFSPath)
			return nil
		},
	}
}

package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/loader"
)

func newCleanupCmd(v *viper.Viper) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Detach the programs and unpin every map (stops load balancing)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(v)
			if err != nil {
				return err
			}
			log := newLogger(c, cmd.ErrOrStderr())
			force, err := cmd.Flags().GetBool("force")
			if err != nil {
				return err
			}
			if err := loader.CleanupWithOptions(c.BPFFSPath, loader.CleanupOptions{Force: force, Logger: log}); err != nil {
				return err
			}
			log.Info("socklb removed", "bpffs", c.BPFFSPath)
			return nil
		},
	}
	cmd.Flags().Bool("force", false, "clean up even while an agent runs on the pin directory (the agent reports it and puts the datapath back)")
	return cmd
}

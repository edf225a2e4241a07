package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

// inspectFrontend is one row of `inspect`, also its JSON form.
type inspectFrontend struct {
	Frontend string           `json:"frontend"`
	Service  string           `json:"service"`
	ID       uint32           `json:"id"`
	Backends []inspectBackend `json:"backends"`
	Connects uint64           `json:"connects"`
	Refused  uint64           `json:"refused"`
}

type inspectBackend struct {
	ID      uint32 `json:"id"`
	Address string `json:"address"`
}

func newInspectCmd(v *viper.Viper) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Print every frontend with its backends and counters, from the pinned maps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(v)
			if err != nil {
				return err
			}
			pinned, err := loader.OpenPinnedMaps(c.BPFFSPath)
			if err != nil {
				return err
			}
			defer pinned.Close()
			rows, err := collectInspect(maps.New(pinned))
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			return printInspect(cmd.OutOrStdout(), rows)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func collectInspect(m maps.Maps) ([]inspectFrontend, error) {
	svcs, err := m.Services()
	if err != nil {
		return nil, err
	}
	bes, err := m.Backends()
	if err != nil {
		return nil, err
	}
	rows := make([]inspectFrontend, 0, len(svcs))
	for _, s := range svcs {
		cnt, err := m.Counters(s.RevNATID)
		if err != nil {
			return nil, err
		}
		row := inspectFrontend{
			Frontend: s.Frontend.String(),
			Service:  s.Name,
			ID:       uint32(s.RevNATID),
			Backends: make([]inspectBackend, 0, len(s.Backends)),
			Connects: cnt.Connects,
			Refused:  cnt.Refused,
		}
		for _, id := range s.Backends {
			addr := "(missing)"
			if b, ok := bes[id]; ok {
				addr = b.String()
			}
			row.Backends = append(row.Backends, inspectBackend{ID: uint32(id), Address: addr})
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func printInspect(w io.Writer, rows []inspectFrontend) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tSERVICE\tID\tBACKENDS\tCONNECTS\tREFUSED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", r.Frontend, r.Service, r.ID, len(r.Backends), r.Connects, r.Refused)
		for _, b := range r.Backends {
			fmt.Fprintf(tw, "  -> %s\t\t\t\t\t\n", b.Address)
		}
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(no frontends)\t\t\t\t\t")
	}
	return tw.Flush()
}

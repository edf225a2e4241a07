package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

// inspectOutput is what `inspect --json` prints.
type inspectOutput struct {
	Frontends []inspectFrontend `json:"frontends"`
	Features  []loader.Feature  `json:"features"`
}

// inspectFrontend is one row of `inspect`, also its JSON form.
type inspectFrontend struct {
	Frontend string `json:"frontend"`
	Service  string `json:"service"`
	ID       uint32 `json:"id"`
	// Kind is ClusterIP, NodePort or External (externalIP or LB IP).
	Kind string `json:"kind"`
	// Affinity is the ClientIP affinity timeout in seconds, 0 for none.
	Affinity uint32 `json:"affinitySeconds"`
	// Local is internalTrafficPolicy: Local.
	Local    bool             `json:"local"`
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
			out := inspectOutput{Frontends: rows, Features: loader.ProbeFeatures()}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			return printInspect(cmd.OutOrStdout(), out)
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
			Kind:     kindOf(s.Flags),
			Local:    s.Flags&maps.FlagLocal != 0,
			Backends: make([]inspectBackend, 0, len(s.Backends)),
			Connects: cnt.Connects,
			Refused:  cnt.Refused,
		}
		if s.Flags&maps.FlagAffinity != 0 {
			row.Affinity = s.AffinityTimeout
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

func kindOf(flags uint16) string {
	switch {
	case flags&maps.FlagNodePort != 0:
		return "NodePort"
	case flags&maps.FlagExternal != 0:
		return "External"
	}
	return "ClusterIP"
}

func printInspect(w io.Writer, out inspectOutput) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tKIND\tSERVICE\tID\tPOLICY\tBACKENDS\tCONNECTS\tREFUSED")
	for _, r := range out.Frontends {
		var policy []string
		if r.Affinity > 0 {
			policy = append(policy, fmt.Sprintf("affinity=%ds", r.Affinity))
		}
		if r.Local {
			policy = append(policy, "local")
		}
		if len(policy) == 0 {
			policy = append(policy, "-")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n", r.Frontend, r.Kind, r.Service, r.ID,
			strings.Join(policy, ","), len(r.Backends), r.Connects, r.Refused)
		for _, b := range r.Backends {
			fmt.Fprintf(tw, "  -> %s\t\t\t\t\t\t\t\n", b.Address)
		}
	}
	if len(out.Frontends) == 0 {
		fmt.Fprintln(tw, "(no frontends)\t\t\t\t\t\t\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nKERNEL FEATURES")
	for _, f := range out.Features {
		state := "yes"
		if !f.Available {
			state = "MISSING (" + f.Detail + ")"
		}
		fmt.Fprintf(w, "  %-62s %s\n", f.Name+" [>= "+f.MinKernel+"]", state)
	}
	return nil
}

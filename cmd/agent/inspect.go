package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

// inspectOutput is what `inspect --json` prints.
type inspectOutput struct {
	Frontends []inspectFrontend `json:"frontends"`
	Features  []loader.Feature  `json:"features"`
	// Agent is the running agent's /status (readiness and the frontends
	// that do not fit in the maps); null when it could not be read, and
	// AgentError says why.
	Agent      *statusReport `json:"agent"`
	AgentError string        `json:"agentError,omitempty"`
	// Ejections are the outlier ejections the agent recorded in the
	// pinned ejection map, current and past (Until before now); they
	// are known even while no agent runs.
	Ejections []inspectEjection `json:"ejections"`
}

type inspectEjection struct {
	Backend   string    `json:"backend"`
	Until     time.Time `json:"until"`
	Ejected   bool      `json:"ejected"`
	Ejections uint32    `json:"ejections"`
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
	Local bool `json:"local"`
	// Policy is random or least-connections (annotation
	// socklb.io/lb-policy).
	Policy string `json:"policy"`
	// OutlierDetection: connects leave out backends that keep failing
	// (annotation socklb.io/outlier-detection, else the agent's default).
	OutlierDetection bool             `json:"outlierDetection"`
	Backends         []inspectBackend `json:"backends"`
	Connects         uint64           `json:"connects"`
	Refused          uint64           `json:"refused"`
}

type inspectBackend struct {
	ID      uint32 `json:"id"`
	Address string `json:"address"`
	// The sock_ops program's counts of TCP connects from this node:
	// open now, failed in all, failed since the last established.
	Open         int64  `json:"openConnections"`
	Failed       uint64 `json:"failedConnects"`
	FailedInARow uint32 `json:"failedInARow"`
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
			rows, err := collectInspect(maps.New(pinned), maps.NewStats(pinned))
			if err != nil {
				return err
			}
			ejections, err := collectEjections(maps.NewEjections(pinned), time.Now())
			if err != nil {
				return err
			}
			out := inspectOutput{Frontends: rows, Features: loader.ProbeFeatures(), Ejections: ejections}
			out.Agent, err = fetchStatus(cmd.Context(), c.HealthAddr)
			if err != nil {
				out.AgentError = err.Error()
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			return printInspect(cmd.OutOrStdout(), out)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	cmd.AddCommand(newWhyCmd(v))
	return cmd
}

func collectInspect(m maps.Maps, st maps.Stats) ([]inspectFrontend, error) {
	svcs, err := m.Services()
	if err != nil {
		return nil, err
	}
	bes, err := m.Backends()
	if err != nil {
		return nil, err
	}
	outcomes, err := st.BackendStats()
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
			Policy:   "random",
			// Only TCP frontends have it.
			OutlierDetection: s.Flags&maps.FlagOutlier != 0,
			Backends:         make([]inspectBackend, 0, len(s.Backends)),
			Connects:         cnt.Connects,
			Refused:          cnt.Refused,
		}
		if s.Flags&maps.FlagAffinity != 0 {
			row.Affinity = s.AffinityTimeout
		}
		if s.Flags&maps.FlagLeastConn != 0 {
			row.Policy = "least-connections"
		}
		for _, id := range s.Backends {
			addr := "(missing)"
			if b, ok := bes[id]; ok {
				addr = b.String()
			}
			o := outcomes[id]
			row.Backends = append(row.Backends, inspectBackend{ID: uint32(id), Address: addr,
				Open: max(o.Open, 0), Failed: o.Failed, FailedInARow: o.Consecutive})
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// collectEjections reads the pinned ejection map, sorted by backend.
func collectEjections(ej maps.Ejections, now time.Time) ([]inspectEjection, error) {
	all, err := ej.Ejections()
	if err != nil {
		return nil, err
	}
	out := make([]inspectEjection, 0, len(all))
	for b, e := range all {
		out = append(out, inspectEjection{Backend: b.String(), Until: e.Until, Ejected: e.Until.After(now), Ejections: e.Ejections})
	}
	slices.SortFunc(out, func(a, b inspectEjection) int { return strings.Compare(a.Backend, b.Backend) })
	return out, nil
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
		if r.Policy != "" && r.Policy != "random" {
			policy = append(policy, r.Policy)
		}
		if len(policy) == 0 {
			policy = append(policy, "-")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\n", r.Frontend, r.Kind, r.Service, r.ID,
			strings.Join(policy, ","), len(r.Backends), r.Connects, r.Refused)
		for _, b := range r.Backends {
			fmt.Fprintf(tw, "  -> %s\t\t\t\t%s\t\t\t\n", b.Address, backendOutcomes(b))
		}
	}
	if len(out.Frontends) == 0 {
		fmt.Fprintln(tw, "(no frontends)\t\t\t\t\t\t\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printAgent(w, out)
	printEjections(w, out)
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

// backendOutcomes is a backend's connect outcomes in a few words.
func backendOutcomes(b inspectBackend) string {
	s := fmt.Sprintf("open=%d failed=%d", b.Open, b.Failed)
	if b.FailedInARow > 0 {
		s += fmt.Sprintf(" (%d in a row)", b.FailedInARow)
	}
	return s
}

// printEjections lists the backends outlier ejection keeps out now, with
// the Services the running agent names, and when each comes back.
func printEjections(w io.Writer, out inspectOutput) {
	services := map[string][]string{}
	if out.Agent != nil {
		for _, e := range out.Agent.Ejected {
			services[e.Backend] = e.Services
		}
	}
	fmt.Fprintln(w, "\nEJECTED (outlier detection)")
	n := 0
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range out.Ejections {
		if !e.Ejected {
			continue
		}
		n++
		svcs := "-"
		// The agent names a backend without its protocol (always TCP).
		if s := services[strings.TrimSuffix(e.Backend, "/TCP")]; len(s) > 0 {
			svcs = strings.Join(s, ",")
		}
		fmt.Fprintf(tw, "  %s\tuntil %s (%s left)\tejection %d\t%s\n", e.Backend, e.Until.Format(time.RFC3339),
			time.Until(e.Until).Round(time.Second), e.Ejections, svcs)
	}
	_ = tw.Flush()
	if n == 0 {
		fmt.Fprintln(w, "  none")
	}
}

func printAgent(w io.Writer, out inspectOutput) {
	fmt.Fprintln(w, "\nAGENT")
	a := out.Agent
	if a == nil {
		fmt.Fprintf(w, "  status unknown: %s\n", out.AgentError)
		return
	}
	if a.Ready {
		fmt.Fprintln(w, "  ready")
	} else {
		fmt.Fprintf(w, "  NOT READY: %s\n", strings.Join(a.NotReady, "; "))
	}
	if len(a.Bypassed) > 0 {
		fmt.Fprintln(w, "\nBYPASSED PODS (socklb leaves their sockets alone)")
		for _, b := range a.Bypassed {
			fmt.Fprintf(w, "  %s  netns cookie %d  %s\n", b.Pod, b.Cookie, b.Why)
		}
	}
	if len(a.OverCapacity) == 0 {
		return
	}
	fmt.Fprintf(w, "\nOVER CAPACITY: %d frontends not programmed (raise --service-map-entries or --backend-map-entries)\n",
		len(a.OverCapacity))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  FRONTEND\tSERVICE\tBACKENDS\tSERVED")
	for _, o := range a.OverCapacity {
		served := "no"
		if o.Stale {
			served = "older version"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\n", o.Frontend, o.Name, o.Backends, served)
	}
	_ = tw.Flush()
}

// fetchStatus reads the running agent's /status from its health address.
func fetchStatus(ctx context.Context, healthAddr string) (*statusReport, error) {
	var r statusReport
	if err := agentGet(ctx, healthAddr, "/status", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/socklb/socklb/pkg/bypass"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/netnsid"
	"github.com/socklb/socklb/pkg/reconciler"
	"github.com/socklb/socklb/pkg/why"
)

// podClient finds a pod's network namespace and whether it is bypassed
// (bypass.Keeper.Client).
type podClient func(namespace, name string) (uint64, bypass.Decision, error)

// whyHandler answers GET /why?q=ADDR:PORT[/tcp|udp][&netns=PATH|&client=NS/POD]
// with a why.Report as JSON. A netns is opened by the agent, which runs
// as root: only callers on this host (loopback) may name one, and only a
// network namespace is entered; the same holds for client=. pods is nil
// without the pod watch.
// bypassed says whether the bypass map holds a netns cookie.
func whyHandler(n why.Node, pods podClient, bypassed func(uint64) (bool, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := why.ParseQuery(r.URL.Query().Get("q"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var client *why.Client
		if (r.URL.Query().Has("client") || r.URL.Query().Has("netns")) && !fromLoopback(r) {
			// Both make the agent read other processes' namespaces as root.
			http.Error(w, "client and netns are only answered to callers on this host", http.StatusForbidden)
			return
		}
		if pod := r.URL.Query().Get("client"); pod != "" {
			ns, name, ok := strings.Cut(pod, "/")
			if !ok || ns == "" || name == "" {
				http.Error(w, fmt.Sprintf("client %q: want NAMESPACE/POD", pod), http.StatusBadRequest)
				return
			}
			if pods == nil {
				http.Error(w, "client: this agent does not watch pods (it needs --source=kubernetes and --node-name)", http.StatusBadRequest)
				return
			}
			cookie, d, err := pods(ns, name)
			switch {
			case errors.Is(err, bypass.ErrUnknownPod):
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			case errors.Is(err, bypass.ErrNotStarted):
				http.Error(w, err.Error(), http.StatusConflict)
				return
			case err != nil:
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			client = &why.Client{Name: "pod " + pod, Cookie: cookie, Bypassed: d.Bypass, Why: d.Why}
			// What the programs read is the map, not the decision.
			inMap, err := bypassed(cookie)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if d.Bypass && !inMap {
				client.Bypassed = false
				client.Why = d.Why + ", but its namespace is not in the bypass map yet (just started, or the map is full)"
			}
		} else if path := r.URL.Query().Get("netns"); path != "" {
			if !filepath.IsAbs(path) {
				http.Error(w, fmt.Sprintf("netns %q: want an absolute path", path), http.StatusBadRequest)
				return
			}
			cookie, err := netnsid.Cookie(filepath.Clean(path))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			client = &why.Client{Name: path, Cookie: cookie}
			if client.Bypassed, err = bypassed(cookie); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if client.Bypassed {
				client.Why = "its network namespace is in the bypass map"
			}
		}
		rep, err := why.Explain(n, q, client)
		switch {
		case errors.Is(err, why.ErrNotSynced):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
}

func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func newWhyCmd(v *viper.Viper) *cobra.Command {
	var asJSON bool
	var netns, client string
	cmd := &cobra.Command{
		Use:   "why ADDR:PORT[/tcp|udp] [--client NAMESPACE/POD | --netns PATH]",
		Short: "Explain what a connect to ADDR:PORT meets on this node, asking the running agent",
		Long: `Explain what a connect to ADDR:PORT meets on this node: which Service and
frontend the address is, every endpoint with the rule that put it in or left
it out, what the kernel's maps hold (and a loud line when that differs from
the agent's plan), the policy and the counters. With --client (a pod of
this node) or --netns (a network namespace), also that client's affinity
entry and whether it is bypassed. The answer comes from the running agent's
health endpoint (--health-addr).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(v)
			if err != nil {
				return err
			}
			if _, err := why.ParseQuery(args[0]); err != nil {
				return err
			}
			if netns != "" {
				if netns, err = filepath.Abs(netns); err != nil {
					return fmt.Errorf("netns: %w", err)
				}
			}
			if netns != "" && client != "" {
				return errors.New("--client and --netns name the same thing: give one")
			}
			params := url.Values{"q": {args[0]}}
			if netns != "" {
				params.Set("netns", netns)
			}
			if client != "" {
				params.Set("client", client)
			}
			var rep why.Report
			if err := agentGet(cmd.Context(), c.HealthAddr, "/why", params, &rep); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return why.Render(cmd.OutOrStdout(), rep, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of words")
	cmd.Flags().StringVar(&client, "client", "", "explain for this pod of the node (NAMESPACE/POD): its affinity entry and whether it is bypassed")
	cmd.Flags().StringVar(&netns, "netns", "", "explain for the client in this network namespace (e.g. /proc/PID/ns/net): its affinity entry")
	return cmd
}

// agentGet reads the running agent's JSON at path on its health
// endpoint into out.
func agentGet(ctx context.Context, healthAddr, path string, params url.Values, out any) error {
	if healthAddr == "" {
		return errors.New("the health endpoint is disabled (--health-addr)")
	}
	host, port, err := net.SplitHostPort(healthAddr)
	if err != nil {
		return fmt.Errorf("health address %q: %w", healthAddr, err)
	}
	// An agent listening on every address is reached on loopback.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: path, RawQuery: params.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("agent %s (is the agent running?): %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent %s: %s: %s", u.String(), resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("agent %s: %w", u.String(), err)
	}
	return nil
}

// whyNode is what `inspect why` reads in this agent.
func whyNode(dp *loader.Datapath, syncer *reconciler.Syncer) why.Node {
	ej := maps.NewEjections(&dp.Maps)
	return why.Node{
		Input:     syncer.Input,
		Facts:     syncer.Facts,
		Kernel:    maps.NewReader(&dp.Maps),
		Ejections: ej.Ejections,
		Now:       time.Now,
		BootNow:   maps.BootTime,
	}
}

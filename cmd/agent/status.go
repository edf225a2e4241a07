package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/socklb/socklb/pkg/bypass"
	"github.com/socklb/socklb/pkg/ejection"
	"github.com/socklb/socklb/pkg/reconciler"
)

// agentStatus is what /readyz and /status report. Its parts are read from
// the jobs that own them; only the datapath check is stored here.
type agentStatus struct {
	synced   func() bool // the first full sync is in the maps
	inSync   func() bool // the last sync wrote everything it planned
	attached func() bool // the programs run on the cgroup
	over     func() []reconciler.OverCapacity
	// ejected lists the backends outlier ejection keeps out now; nil
	// when the agent has no ejector.
	ejected func() []ejection.Ejected
	// bypassed lists the pods whose sockets socklb leaves alone; nil
	// without the pod watch.
	bypassed func() []bypass.Entry

	mu sync.Mutex
	// datapathDrift is what the last datapath check found and could not
	// repair ("" when the pins and links are as the agent made them).
	datapathDrift string
}

func (s *agentStatus) setDatapathDrift(d string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.datapathDrift = d
}

// statusReport is the JSON of /status, which `inspect` also prints.
type statusReport struct {
	Ready bool `json:"ready"`
	// NotReady says why Ready is false, one reason per entry.
	NotReady []string `json:"notReady"`
	Synced   bool     `json:"synced"`
	InSync   bool     `json:"inSync"`
	Attached bool     `json:"attached"`
	// DatapathDrift is what the last check of the pins and links found
	// and could not repair; empty when they are intact.
	DatapathDrift string `json:"datapathDrift"`
	// OverCapacity lists the frontends the maps have no room for.
	OverCapacity []overCapacityRow `json:"overCapacity"`
	// Ejected lists the backends outlier ejection keeps out of new
	// connects now, with the Services that leave them out.
	Ejected []ejectedRow `json:"ejected"`
	// Bypassed lists the pods whose sockets socklb leaves alone.
	Bypassed []bypass.Entry `json:"bypassed"`
}

type ejectedRow struct {
	Backend   string    `json:"backend"`
	Until     time.Time `json:"until"`
	Ejections int       `json:"ejections"`
	Services  []string  `json:"services"`
}

type overCapacityRow struct {
	Service  string `json:"service"`
	Name     string `json:"name"`
	Frontend string `json:"frontend"`
	Backends int    `json:"backends"`
	// Stale: an older version of the frontend is still served.
	Stale bool `json:"stale"`
}

func (s *agentStatus) report() statusReport {
	s.mu.Lock()
	drift := s.datapathDrift
	s.mu.Unlock()
	r := statusReport{
		Synced:        s.synced(),
		InSync:        s.inSync(),
		Attached:      s.attached(),
		DatapathDrift: drift,
		NotReady:      []string{},
		OverCapacity:  []overCapacityRow{},
	}
	r.Ejected = []ejectedRow{}
	r.Bypassed = []bypass.Entry{}
	if s.bypassed != nil {
		r.Bypassed = append(r.Bypassed, s.bypassed()...)
	}
	if s.ejected != nil {
		for _, e := range s.ejected() {
			row := ejectedRow{Backend: e.Backend.String(), Until: e.Until, Ejections: e.Ejections, Services: []string{}}
			for _, n := range e.Services {
				row.Services = append(row.Services, n.String())
			}
			r.Ejected = append(r.Ejected, row)
		}
	}
	for _, o := range s.over() {
		r.OverCapacity = append(r.OverCapacity, overCapacityRow{
			Service: o.Service, Name: o.Name, Frontend: o.Frontend.String(), Backends: o.Backends, Stale: o.Stale,
		})
	}
	switch {
	case !r.Synced:
		r.NotReady = append(r.NotReady, "first sync not done")
	case !r.InSync:
		r.NotReady = append(r.NotReady, "the last map sync failed; retrying")
	}
	if !r.Attached {
		r.NotReady = append(r.NotReady, "programs not attached")
	}
	if drift != "" {
		r.NotReady = append(r.NotReady, "datapath differs from what the agent pinned: "+drift)
	}
	if n := len(r.OverCapacity); n > 0 {
		r.NotReady = append(r.NotReady, fmt.Sprintf("%d frontends do not fit in the maps", n))
	}
	r.Ready = len(r.NotReady) == 0
	return r
}

// statusHandler answers /healthz (the process runs), /readyz (the kernel
// holds everything the agent wants: the first sync is done, the last one
// succeeded, the programs are attached from intact pins, and every
// frontend fits) and /status (the same as JSON, with the frontends that
// do not fit). The DaemonSet's probes use the first two. /healthz does
// not wait for the rest: new maps get their programs only after the first
// sync, and while the source is unreachable a restart would not hasten
// that (the programs attached before keep serving meanwhile).
//
// why, when not nil, answers /why (`inspect why`).
func statusHandler(s *agentStatus, why http.Handler) http.Handler {
	mux := http.NewServeMux()
	if why != nil {
		mux.Handle("GET /why", why)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := s.report()
		if !r.Ready {
			http.Error(w, "not ready: "+strings.Join(r.NotReady, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.report())
	})
	return mux
}

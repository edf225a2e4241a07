package why

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the answer to one question, also its JSON form.
type Report struct {
	Query string `json:"query"`
	// Verdict says in one line what a connect there meets.
	Verdict   string     `json:"verdict"`
	Frontends []Frontend `json:"frontends"`
	// KnownPorts are the frontends of Services at the address when none
	// is at the port: a known address at an unknown port.
	KnownPorts []KnownPort `json:"knownPorts,omitempty"`
	// UnknownPorts is what the kernel does with the ports and protocols
	// no Service has at the address, when it is a ClusterIP.
	UnknownPorts *UnknownPorts `json:"unknownPorts,omitempty"`
	// KernelOnly are frontends at the address and port that the kernel
	// holds and the plan does not.
	KernelOnly []string `json:"kernelOnly,omitempty"`
	// Unbalanced are Services' ports at the address and port of a
	// protocol socklb does not balance.
	Unbalanced []string `json:"unbalanced,omitempty"`
	// NodeAddress: the address is one of this node's (NodePorts).
	NodeAddress bool         `json:"nodeAddress"`
	NotHandled  []NotHandled `json:"notHandled,omitempty"`
	Warnings    []string     `json:"warnings,omitempty"`
	Client      *Client      `json:"client,omitempty"`
}

// UnknownPorts is what a connect to a ClusterIP meets at a port, or with
// a protocol, that none of its Services has.
type UnknownPorts struct {
	// Refused: the kernel holds the address in its cluster IP map, so
	// such connects are refused (ECONNREFUSED); Refusals counts them.
	Refused  bool   `json:"refused"`
	Refusals uint64 `json:"refusals"`
	// OverCapacity: a ClusterIP frontend at the address has no room in
	// the maps, so the plan leaves the address out of the cluster IP
	// map, and such connects leave untranslated.
	OverCapacity bool `json:"overCapacity"`
	// NoClusterIP: no ClusterIP frontend wins at the address in the plan
	// (other Services' external addresses claim its ports).
	NoClusterIP bool `json:"noClusterIP,omitempty"`
	// Differs is the difference between the kernel and the plan, ""
	// for none.
	Differs string `json:"differs,omitempty"`
}

// KnownPort is a frontend of a Service at the queried address.
type KnownPort struct {
	Service string `json:"service"`
	Kind    string `json:"kind"`
	Port    string `json:"port"`
}

// NotHandled is a Service with the address that socklb leaves alone.
type NotHandled struct {
	Service string `json:"service"`
	Reason  string `json:"reason"`
}

// Frontend is one frontend at the address.
type Frontend struct {
	Frontend         string `json:"frontend"`
	Kind             string `json:"kind"`
	Service          string `json:"service"`
	PortName         string `json:"portName,omitempty"`
	Policy           string `json:"policy"`
	AffinitySeconds  int    `json:"affinitySeconds"`
	TrafficLocal     bool   `json:"internalTrafficPolicyLocal"`
	ExternalLocal    bool   `json:"externalTrafficPolicyLocal"`
	OutlierDetection bool   `json:"outlierDetection"`
	// Losers are other Services claiming the same frontend.
	Losers           []string `json:"losers,omitempty"`
	OverCapacity     bool     `json:"overCapacity"`
	KeptOlderVersion bool     `json:"keptOlderVersion"`
	// Endpoints are every endpoint of the Service at this port, with
	// the model's reason.
	Endpoints []Endpoint `json:"endpoints"`
	// Planned are the backends the plan writes.
	Planned []string `json:"planned"`
	// Kernel is what the maps hold; nil when they hold nothing.
	Kernel *Kernel `json:"kernel"`
	// Differs is the difference between the kernel and the plan, "" for
	// none.
	Differs        string          `json:"differs,omitempty"`
	ClientAffinity *ClientAffinity `json:"clientAffinity,omitempty"`
}

// Endpoint is one endpoint and why it is used or not.
type Endpoint struct {
	Address     string   `json:"address"`
	Node        string   `json:"node,omitempty"`
	Ready       bool     `json:"ready"`
	Serving     bool     `json:"serving"`
	Terminating bool     `json:"terminating"`
	ZoneHints   []string `json:"zoneHints,omitempty"`
	NodeHints   []string `json:"nodeHints,omitempty"`
	Used        bool     `json:"used"`
	Reason      string   `json:"reason"`
	// EjectedUntil is the end of a current outlier ejection.
	EjectedUntil *time.Time `json:"ejectedUntil,omitempty"`
	Ejections    uint32     `json:"ejections,omitempty"`
	// ID and the connect outcomes from this node, for backends in the
	// kernel's slots.
	ID           uint32 `json:"id,omitempty"`
	Open         int64  `json:"openConnections"`
	Failed       uint64 `json:"failedConnects"`
	FailedInARow uint32 `json:"failedInARow"`
}

// Kernel is a frontend as the maps hold it.
type Kernel struct {
	ID       uint32   `json:"id"`
	Backends []string `json:"backends"`
	Connects uint64   `json:"connects"`
	Refused  uint64   `json:"refused"`
	Damage   []string `json:"damage,omitempty"`
}

// ClientAffinity is the client's sticky backend for the frontend.
type ClientAffinity struct {
	Present     bool    `json:"present"`
	Backend     string  `json:"backend,omitempty"`
	IdleSeconds float64 `json:"idleSeconds,omitempty"`
	// Expired: idle longer than the timeout; the next connect picks
	// anew.
	Expired bool `json:"expired,omitempty"`
}

// Render writes r in words, now being the time to count ejections from.
func Render(w io.Writer, r Report, now time.Time) error {
	p := &printer{w: w}
	p.f("%s: %s\n", r.Query, r.Verdict)
	if c := r.Client; c != nil {
		p.f("client: %s (netns cookie %d)", c.Name, c.Cookie)
		switch {
		case c.Bypassed:
			p.f(": bypassed, %s\n", c.Why)
		case c.Why != "":
			p.f(": not bypassed (%s)\n", c.Why)
		default:
			p.f(": not bypassed\n")
		}
	}
	for _, f := range r.Frontends {
		p.frontend(f, now)
	}
	if len(r.KnownPorts) > 0 {
		p.f("\nServices at this address:\n")
		for _, k := range r.KnownPorts {
			p.f("  %s %s port %s\n", k.Service, k.Kind, k.Port)
		}
	}
	if u := r.UnknownPorts; u != nil {
		switch {
		case u.Refused:
			p.f("\nother ports of this ClusterIP: refused by the kernel (%d refused so far)\n", u.Refusals)
		case u.OverCapacity:
			p.f("\nother ports of this ClusterIP: left untranslated (a frontend of it is over map capacity)\n")
		case u.NoClusterIP:
			p.f("\nother ports of this address: left untranslated (no ClusterIP frontend of its own)\n")
		default:
			p.f("\nother ports of this ClusterIP: left untranslated (not in the kernel's cluster IP map)\n")
		}
		if u.Differs != "" {
			p.f("  !!! KERNEL DIFFERS FROM THE PLAN: %s\n", u.Differs)
		}
	}
	for _, k := range r.KernelOnly {
		p.f("\n!!! KERNEL DIFFERS FROM THE PLAN: the kernel holds %s, which the plan does not have\n", k)
	}
	for _, u := range r.Unbalanced {
		p.f("\n%s: not balanced by socklb (only TCP and UDP are), left untouched\n", u)
	}
	for _, n := range r.NotHandled {
		p.f("\n%s has this address but is not balanced by socklb: %s\n", n.Service, n.Reason)
	}
	if len(r.Warnings) > 0 {
		p.f("\nwarnings:\n")
		for _, s := range r.Warnings {
			p.f("  %s\n", s)
		}
	}
	return p.err
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *printer) frontend(f Frontend, now time.Time) {
	p.f("\n%s: %s %s", f.Frontend, f.Kind, f.Service)
	if f.PortName != "" {
		p.f(" port %q", f.PortName)
	}
	p.f("\n")
	if len(f.Losers) > 0 {
		p.f("  also claimed by %s, which lose to it (the older Service wins)\n", strings.Join(f.Losers, ", "))
	}
	affinity := "none"
	if f.AffinitySeconds > 0 {
		affinity = fmt.Sprintf("ClientIP, %d s", f.AffinitySeconds)
	}
	itp := "Cluster"
	if f.TrafficLocal {
		itp = "Local"
	}
	p.f("  policy %s; session affinity %s; internalTrafficPolicy %s; outlier detection %s\n",
		f.Policy, affinity, itp, onOff(f.OutlierDetection))
	p.f("  endpoints (%d):\n", len(f.Endpoints))
	if len(f.Endpoints) > 0 {
		tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
		old := p.w
		p.w = tw
		for _, e := range f.Endpoints {
			use := "out"
			if e.Used {
				use = "in"
			}
			reason := e.Reason
			if e.EjectedUntil != nil {
				reason += fmt.Sprintf(" (ejection %d, %s left)", e.Ejections, e.EjectedUntil.Sub(now).Round(100*time.Millisecond))
			}
			stats := ""
			if e.ID != 0 {
				stats = fmt.Sprintf("open %d, failed %d (%d in a row)", e.Open, e.Failed, e.FailedInARow)
			}
			p.f("    %s\t%s\t%s\t%s\t%s\n", e.Address, orDash(e.Node), use, reason, stats)
		}
		if p.err == nil {
			p.err = tw.Flush()
		}
		p.w = old
	}
	switch {
	case f.OverCapacity && f.KeptOlderVersion:
		p.f("  plan: over map capacity; the maps keep an older version of this frontend\n")
	case f.OverCapacity:
		p.f("  plan: over map capacity; not programmed\n")
	default:
		p.f("  plan: %s %s\n", count(len(f.Planned), "backend"), list(f.Planned))
	}
	if k := f.Kernel; k != nil {
		p.f("  kernel: frontend id %d, %s %s; %d connects, %d refused\n",
			k.ID, count(len(k.Backends), "backend"), list(k.Backends), k.Connects, k.Refused)
	} else {
		p.f("  kernel: not in the maps\n")
	}
	if f.Differs != "" {
		p.f("  !!! KERNEL DIFFERS FROM THE PLAN: %s\n", f.Differs)
	}
	if a := f.ClientAffinity; a != nil {
		switch {
		case !a.Present:
			p.f("  client affinity: none yet (the next connect picks and remembers)\n")
		case a.Expired:
			p.f("  client affinity: %s, idle %.0f s: expired, the next connect picks anew\n", a.Backend, a.IdleSeconds)
		default:
			p.f("  client affinity: %s, idle %.0f s\n", a.Backend, a.IdleSeconds)
		}
	}
}

// count says "1 backend", "2 backends".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func list(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return "[" + strings.Join(s, " ") + "]"
}

// Package why answers `inspect why ADDR:PORT`: it joins the model's
// explanation of an address (lb.Explain: which Service, which endpoints
// and the rule that put each in or left it out) with what this node
// holds for it: the kernel's entry and slots, the counters, the outlier
// ejections and a client's affinity. It decides nothing itself; the
// reasons are the model's.
package why

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// ErrNotSynced: the agent has no complete view of the objects yet.
var ErrNotSynced = errors.New("the agent has not synced its sources yet")

// ErrQuery: the address to explain does not parse.
var ErrQuery = errors.New("bad query")

// Node is where Explain reads what it joins. Every func must be safe to
// call from any goroutine.
type Node struct {
	// Input is the model's input now; false before every source synced.
	Input func() (lb.Input, bool)
	// Facts are what the last sync wrote besides the model's state.
	Facts func() lb.Facts
	// Kernel reads single entries of the maps.
	Kernel maps.Reader
	// Ejections reads the pinned ejection record; nil without one.
	Ejections func() (map[maps.Backend]maps.Ejection, error)
	// Now is the wall clock, BootNow the boot-time clock the maps'
	// timestamps use.
	Now     func() time.Time
	BootNow func() (time.Duration, error)
}

// Client is the client a question is asked for: its network namespace,
// by the cookie the programs key affinity with.
type Client struct {
	// Name says how it was given: a pod's namespace/name or a netns path.
	Name   string `json:"name"`
	Cookie uint64 `json:"netnsCookie"`
	// Bypassed: socklb leaves this client's sockets alone (a bypass
	// selector or annotation chose its pod); Why says which, or why not.
	Bypassed bool   `json:"bypassed"`
	Why      string `json:"why,omitempty"`
}

// ParseQuery parses "ADDR:PORT", "ADDR:PORT/tcp" or "ADDR:PORT/udp"
// (IPv6 in brackets). Without a protocol both are explained.
func ParseQuery(s string) (lb.Query, error) {
	addr, proto, _ := strings.Cut(strings.TrimSpace(s), "/")
	var q lb.Query
	switch strings.ToLower(proto) {
	case "":
	case "tcp":
		q.Proto = lb.TCP
	case "udp":
		q.Proto = lb.UDP
	default:
		return lb.Query{}, fmt.Errorf("%w: %q: protocol %q is not tcp or udp", ErrQuery, s, proto)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return lb.Query{}, fmt.Errorf("%w: %q: want ADDR:PORT[/tcp|udp]: %w", ErrQuery, s, err)
	}
	if ap.Port() == 0 || ap.Addr().Zone() != "" {
		return lb.Query{}, fmt.Errorf("%w: %q: want a port from 1 to 65535 and an address without a zone", ErrQuery, s)
	}
	q.Addr, q.Port = ap.Addr().Unmap(), ap.Port()
	return q, nil
}

// QueryString is the canonical form of q, as ParseQuery reads it.
func QueryString(q lb.Query) string {
	s := netip.AddrPortFrom(q.Addr, q.Port).String()
	if q.Proto != 0 {
		s += "/" + strings.ToLower(q.Proto.String())
	}
	return s
}

// Explain answers q, for client when it is not nil.
func Explain(n Node, q lb.Query, client *Client) (Report, error) {
	in, ok := n.Input()
	if !ok {
		return Report{}, ErrNotSynced
	}
	facts := n.Facts() // once: one answer, one sync's facts
	ex := lb.Explain(in, q, facts)
	r := Report{
		Query: QueryString(q), NodeAddress: ex.NodeAddress, Client: client,
		NotHandled: notHandled(ex.NotHandled), Warnings: warnings(ex.Warnings),
	}
	for _, p := range ex.Ports {
		r.KnownPorts = append(r.KnownPorts, KnownPort{Service: p.Name.String(), Kind: p.Kind.String(),
			Port: strconv.Itoa(int(p.Port)) + "/" + p.Proto.String()})
	}
	var ejections map[maps.Backend]maps.Ejection
	if n.Ejections != nil {
		var err error
		if ejections, err = n.Ejections(); err != nil {
			return Report{}, fmt.Errorf("read the ejection record: %w", err)
		}
	}
	now := n.Now()
	boot, err := n.BootNow()
	if err != nil {
		return Report{}, fmt.Errorf("read the boot-time clock: %w", err)
	}
	for _, fr := range ex.Frontends {
		f, err := frontend(n.Kernel, fr, ejections, now, boot, client)
		if err != nil {
			return Report{}, err
		}
		r.Frontends = append(r.Frontends, f)
	}
	if r.UnknownPorts, err = unknownPorts(n.Kernel, ex, facts); err != nil {
		return Report{}, err
	}
	if r.KernelOnly, err = kernelOnly(n.Kernel, ex); err != nil {
		return Report{}, err
	}
	for _, u := range ex.Unbalanced {
		r.Unbalanced = append(r.Unbalanced, fmt.Sprintf("%s port %d/%s", u.Name, q.Port, u.Protocol))
	}
	r.Verdict = verdict(r, ex)
	if len(r.KernelOnly) > 0 {
		r.Verdict = "the kernel still balances " + strings.Join(r.KernelOnly, ", ") +
			", which the plan no longer has (a sync is pending or failed); the plan: " + r.Verdict
	}
	if client != nil && client.Bypassed {
		r.Verdict = "this client is bypassed (" + client.Why + "): socklb leaves its connects untouched, whatever the address; for the others: " + r.Verdict
	}
	return r, nil
}

func frontend(k maps.Reader, fr lb.FrontendReport, ejections map[maps.Backend]maps.Ejection, now time.Time,
	boot time.Duration, client *Client) (Frontend, error) {
	s := fr.Service
	f := Frontend{
		Frontend: s.Frontend.String(), Kind: s.Kind.String(), Service: s.Name.String(), PortName: s.PortName,
		Policy: s.Policy.String(), AffinitySeconds: int(s.AffinityTimeout / time.Second),
		TrafficLocal: s.TrafficLocal, ExternalLocal: s.ExternalLocal, OutlierDetection: s.OutlierDetection,
		OverCapacity: fr.OverCapacity, KeptOlderVersion: fr.Stale,
	}
	for _, l := range fr.Losers {
		f.Losers = append(f.Losers, l.String())
	}
	for _, b := range s.Backends {
		f.Planned = append(f.Planned, b.String())
	}
	proto := uint8(s.Frontend.Proto)
	for _, e := range fr.Endpoints {
		ep := Endpoint{
			Address: e.Backend.String(), Node: e.NodeName, Ready: e.Ready, Serving: e.Serving,
			Terminating: e.Terminating, ZoneHints: e.ZoneHints, NodeHints: e.NodeHints,
			Used: e.Reason.Used(), Reason: e.Reason.String(),
		}
		if ej, ok := ejections[maps.Backend{Addr: e.Backend.Addr.Unmap(), Port: e.Backend.Port, Proto: proto}]; ok && ej.Until.After(now) {
			until := ej.Until
			ep.EjectedUntil = &until
			ep.Ejections = ej.Ejections
		}
		f.Endpoints = append(f.Endpoints, ep)
	}
	fe := maps.Frontend{Addr: s.Frontend.Addr.Unmap(), Port: s.Frontend.Port, Proto: proto}
	live, ok, err := k.Frontend(fe)
	if err != nil {
		return Frontend{}, fmt.Errorf("read frontend %s from the maps: %w", fe, err)
	}
	if ok {
		kf, err := kernelFrontend(k, live, f.Endpoints)
		if err != nil {
			return Frontend{}, err
		}
		f.Kernel = &kf
		if client != nil && s.AffinityTimeout > 0 {
			if f.ClientAffinity, err = affinity(k, client, live.RevNATID, s.AffinityTimeout, boot); err != nil {
				return Frontend{}, err
			}
		}
	}
	f.Differs = differs(f, ok)
	return f, nil
}

// kernelFrontend reads what the kernel holds for live and fills in the
// endpoints' connect outcomes.
func kernelFrontend(k maps.Reader, live maps.Service, eps []Endpoint) (Kernel, error) {
	kf := Kernel{ID: uint32(live.RevNATID), Damage: live.Damage}
	c, err := k.Counters(live.RevNATID)
	if err != nil {
		return Kernel{}, fmt.Errorf("read the counters of frontend %s: %w", live.Frontend, err)
	}
	kf.Connects, kf.Refused = c.Connects, c.Refused
	for _, id := range live.Backends {
		b, ok, err := k.Backend(id)
		if err != nil {
			return Kernel{}, fmt.Errorf("read backend %d: %w", id, err)
		}
		if !ok {
			kf.Damage = append(kf.Damage, fmt.Sprintf("backend %d of a live slot is not in the backend map", id))
			continue
		}
		addr := netip.AddrPortFrom(b.Addr, b.Port).String()
		kf.Backends = append(kf.Backends, addr)
		st, ok, err := k.BackendStat(id)
		if err != nil {
			return Kernel{}, fmt.Errorf("read the connect outcomes of backend %d: %w", id, err)
		}
		if i := slices.IndexFunc(eps, func(e Endpoint) bool { return e.Address == addr }); i >= 0 {
			eps[i].ID = uint32(id)
			if ok {
				eps[i].Open, eps[i].Failed, eps[i].FailedInARow = st.Open, st.Failed, st.Consecutive
			}
		}
	}
	slices.Sort(kf.Backends)
	return kf, nil
}

func affinity(k maps.Reader, client *Client, revNAT maps.RevNATID, timeout, boot time.Duration) (*ClientAffinity, error) {
	a, ok, err := k.ClientAffinity(client.Cookie, revNAT)
	if err != nil {
		return nil, fmt.Errorf("read the affinity of %s: %w", client.Name, err)
	}
	if !ok {
		return &ClientAffinity{}, nil
	}
	b, found, err := k.Backend(a.Backend)
	if err != nil {
		return nil, fmt.Errorf("read backend %d: %w", a.Backend, err)
	}
	ca := &ClientAffinity{Present: true, IdleSeconds: (boot - a.LastUsed).Seconds()}
	ca.Expired = boot-a.LastUsed > timeout
	if found {
		ca.Backend = netip.AddrPortFrom(b.Addr, b.Port).String()
	} else {
		ca.Backend = fmt.Sprintf("backend %d, gone from the backend map", a.Backend)
	}
	return ca, nil
}

// differs compares the kernel's live set with the plan: "" when they
// agree, or when the plan knowingly keeps an older version (over
// capacity, which the report says).
func differs(f Frontend, published bool) string {
	switch {
	case f.OverCapacity && f.KeptOlderVersion:
		return ""
	case f.OverCapacity:
		if published {
			return "the frontend is over capacity, yet the maps hold it"
		}
		return ""
	case !published:
		return "the plan has this frontend but the maps do not (a sync is pending or failed)"
	}
	if len(f.Kernel.Damage) > 0 {
		return "the maps' entry is damaged: " + strings.Join(f.Kernel.Damage, "; ")
	}
	planned := slices.Sorted(slices.Values(f.Planned))
	if !slices.Equal(planned, f.Kernel.Backends) {
		return fmt.Sprintf("the kernel holds %v, the plan %v (a sync is pending or failed)", f.Kernel.Backends, planned)
	}
	return ""
}

func notHandled(in []lb.NotHandled) []NotHandled {
	var out []NotHandled
	for _, n := range in {
		out = append(out, NotHandled{Service: n.Name.String(), Reason: n.Reason})
	}
	return out
}

func warnings(in []lb.Warning) []string {
	var out []string
	for _, w := range in {
		out = append(out, w.Object+": "+w.Reason)
	}
	return out
}

// unknownPorts says what the kernel does with the address's ports and
// protocols that no Service has, when it is a ClusterIP in the plan or in
// the kernel; nil otherwise. The plan's rule (placeVIPs): the address is
// in the cluster IP map while a ClusterIP frontend wins there and none of
// those is left out for room.
func unknownPorts(k maps.Reader, ex lb.Explanation, facts lb.Facts) (*UnknownPorts, error) {
	var clusterIPs []lb.Frontend
	for _, p := range ex.AtAddress {
		if p.Kind == lb.KindClusterIP {
			clusterIPs = append(clusterIPs, lb.Frontend{Addr: ex.Query.Addr, Port: p.Port, Proto: p.Proto})
		}
	}
	refused, inMap, err := k.VIP(ex.Query.Addr)
	if err != nil {
		return nil, fmt.Errorf("read cluster IP %s from the maps: %w", ex.Query.Addr, err)
	}
	if len(clusterIPs) == 0 && !inMap {
		return nil, nil
	}
	u := UnknownPorts{Refused: inMap, Refusals: refused, NoClusterIP: len(clusterIPs) == 0}
	for _, fe := range clusterIPs {
		if stale, over := facts.OverCapacity[fe]; over && !stale {
			u.OverCapacity = true
		}
	}
	planned := len(clusterIPs) > 0 && !u.OverCapacity
	switch {
	case u.Refused && u.NoClusterIP:
		u.Differs = "the kernel refuses the address's unknown ports, but the plan has no ClusterIP frontend there (a sync is pending or failed)"
	case u.Refused && !planned:
		u.Differs = "the kernel refuses the address's unknown ports, but a ClusterIP frontend of it is over capacity (a sync is pending or failed)"
	case !u.Refused && planned:
		u.Differs = "the kernel does not hold the address in its cluster IP map, so its unknown ports leave untranslated (a sync is pending or failed)"
	}
	return &u, nil
}

// kernelOnly lists the frontends at the queried address and port that
// the kernel holds and the plan does not have (a Service deleted, or no
// longer socklb's, while its sync is pending or failed).
func kernelOnly(k maps.Reader, ex lb.Explanation) ([]string, error) {
	planned := map[lb.Proto]bool{}
	for _, f := range ex.Frontends {
		planned[f.Service.Frontend.Proto] = true
	}
	var out []string
	for _, p := range []lb.Proto{lb.TCP, lb.UDP} {
		if planned[p] || (ex.Query.Proto != 0 && ex.Query.Proto != p) {
			continue
		}
		fe := maps.Frontend{Addr: ex.Query.Addr, Port: ex.Query.Port, Proto: uint8(p)}
		live, ok, err := k.Frontend(fe)
		if err != nil {
			return nil, fmt.Errorf("read frontend %s from the maps: %w", fe, err)
		}
		if ok {
			out = append(out, fmt.Sprintf("%s (%s, frontend id %d, %s)", fe, orUnnamed(live.Name), live.RevNATID,
				count(len(live.Backends), "backend")))
		}
	}
	return out, nil
}

func orUnnamed(s string) string {
	if s == "" || s == "/" {
		return "no name"
	}
	return s
}

// unknownVerdict says what a connect to a port (or protocol) the
// ClusterIP does not have meets; what names it.
func unknownVerdict(u *UnknownPorts, what string) string {
	switch {
	case u.Refused:
		return "refused at once (ECONNREFUSED): " + what
	case u.OverCapacity:
		return "left untranslated: " + what + "; a frontend of the address is over map capacity, and socklb refuses none of its ports then"
	case u.NoClusterIP:
		return "left untranslated: " + what + "; the address has no ClusterIP frontend of its own (other Services' external addresses claim its ports)"
	}
	return "left untranslated for now: " + what + "; the kernel does not hold the address (a sync is pending or failed)"
}

// verdict says in one line what happens to a connect to the address.
func verdict(r Report, ex lb.Explanation) string {
	if len(r.Frontends) > 0 {
		var parts []string
		protos := map[lb.Proto]bool{}
		for i, f := range r.Frontends {
			protos[ex.Frontends[i].Service.Frontend.Proto] = true
			switch {
			case f.OverCapacity && f.KeptOlderVersion:
				parts = append(parts, f.Frontend+": over map capacity; the kernel keeps an older version")
			case f.OverCapacity && r.UnknownPorts != nil && r.UnknownPorts.Refused:
				parts = append(parts, f.Frontend+": over map capacity; not programmed, and the kernel holds the address as a ClusterIP: refused at once (ECONNREFUSED)")
			case f.OverCapacity:
				parts = append(parts, f.Frontend+": over map capacity; not programmed, so connects leave untranslated")
			case len(f.Planned) == 0:
				parts = append(parts, f.Frontend+": refused at once (ECONNREFUSED): no usable endpoint")
			default:
				parts = append(parts, fmt.Sprintf("%s: balanced over %s (%s)", f.Frontend, count(len(f.Planned), "backend"), f.Policy))
			}
		}
		// Without a protocol both were asked about: say what the other
		// one meets at a ClusterIP.
		for _, p := range []lb.Proto{lb.TCP, lb.UDP} {
			if ex.Query.Proto == 0 && !protos[p] && r.UnknownPorts != nil {
				port := strconv.Itoa(int(ex.Query.Port)) + "/" + p.String()
				parts = append(parts, port+": "+unknownVerdict(r.UnknownPorts, "the Service has no port "+port))
			}
		}
		return strings.Join(parts, "; ")
	}
	if r.UnknownPorts != nil {
		var parts []string
		for _, u := range r.Unbalanced {
			parts = append(parts, u+": a protocol socklb does not balance, left untouched")
		}
		what := "a ClusterIP"
		if i := slices.IndexFunc(ex.Ports, func(p lb.PortUse) bool { return p.Kind == lb.KindClusterIP }); i >= 0 {
			what += " of " + ex.Ports[i].Name.String()
		}
		port := portOf(ex.Query)
		if ex.Query.Proto == 0 && len(r.Unbalanced) > 0 {
			port = strconv.Itoa(int(ex.Query.Port)) + "/TCP or /UDP"
		}
		parts = append(parts, unknownVerdict(r.UnknownPorts, what+", which has no port "+port))
		return strings.Join(parts, "; ")
	}
	if len(r.Unbalanced) > 0 {
		return strings.Join(r.Unbalanced, ", ") + ": a protocol socklb does not balance, left untouched"
	}
	if len(ex.Ports) > 0 {
		return "not a Service frontend at this port (the address is a Service's external address): socklb leaves it untouched"
	}
	if ex.NodeAddress {
		return "a node address with no NodePort here: socklb leaves it untouched"
	}
	return "not a Service frontend: socklb leaves it untouched"
}

func portOf(q lb.Query) string {
	if q.Proto == 0 {
		return strconv.Itoa(int(q.Port))
	}
	return strconv.Itoa(int(q.Port)) + "/" + q.Proto.String()
}

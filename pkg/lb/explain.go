package lb

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// Reason says why an endpoint is one of a frontend's backends or not. The
// model decides with these (chooseBackends), and Explain reports them, so
// an explanation cannot disagree with what is programmed.
type Reason uint8

// Reasons. The first two put an endpoint in; every other one leaves it out.
const (
	// ReasonReady: ready, and allowed by the traffic policy and topology.
	ReasonReady Reason = iota + 1
	// ReasonServingTerminating: no endpoint is ready, and this one is
	// terminating but still serving: the fallback that lets a Service
	// drain.
	ReasonServingTerminating
	// ReasonNotReady: not ready, and not terminating.
	ReasonNotReady
	// ReasonTerminating: terminating and serving, but ready endpoints
	// exist, so the fallback does not apply.
	ReasonTerminating
	// ReasonTerminatingNotServing: terminating and no longer serving.
	ReasonTerminatingNotServing
	// ReasonOtherNode: on another node, and the Service has
	// internalTrafficPolicy: Local.
	ReasonOtherNode
	// ReasonOtherZone: its zone hints do not name this node's zone, and
	// every ready endpoint has hints (PreferClose, PreferSameZone).
	ReasonOtherZone
	// ReasonOtherNodeHint: its node hints do not name this node, and
	// every ready endpoint has them (PreferSameNode).
	ReasonOtherNodeHint
	// ReasonOtherFamily: its address is of the other IP family than the
	// frontend's; kube-proxy does not translate between families.
	ReasonOtherFamily
	// ReasonEjected: it would be used, but outlier ejection leaves it out
	// for now (Facts.Ejected).
	ReasonEjected
	// ReasonOverCapacity: it would be used, but the maps have no room for
	// its frontend (Facts.OverCapacity).
	ReasonOverCapacity
)

// Used reports whether the reason puts the endpoint in the frontend's
// backends.
func (r Reason) Used() bool { return r == ReasonReady || r == ReasonServingTerminating }

func (r Reason) String() string {
	switch r {
	case ReasonReady:
		return "ready"
	case ReasonServingTerminating:
		return "serving and terminating: no endpoint is ready, so the terminating ones that still serve are used"
	case ReasonNotReady:
		return "not ready"
	case ReasonTerminating:
		return "terminating: used only while no endpoint is ready"
	case ReasonTerminatingNotServing:
		return "terminating and not serving"
	case ReasonOtherNode:
		return "on another node: internalTrafficPolicy is Local"
	case ReasonOtherZone:
		return "hinted for another zone (topology hints: PreferClose / PreferSameZone)"
	case ReasonOtherNodeHint:
		return "hinted for another node (topology hints: PreferSameNode)"
	case ReasonOtherFamily:
		return "of the other IP family than the frontend"
	case ReasonEjected:
		return "ejected by outlier detection"
	case ReasonOverCapacity:
		return "its frontend does not fit in the maps"
	}
	return "unknown reason"
}

// MarshalText writes the reason's words.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Query is the address a connect goes to.
type Query struct {
	Addr netip.Addr
	Port uint16
	// Proto is TCP or UDP; 0 asks for both.
	Proto Proto
}

// Facts are what the node knows besides the objects: which frontends the
// writer could not fit and which members outlier ejection leaves out.
type Facts struct {
	// Ejected are, per frontend, the members left out for ejection, as
	// the last sync wrote them.
	Ejected map[Frontend][]Backend
	// OverCapacity are the frontends without room in the maps; true
	// when the maps keep an older version of the frontend.
	OverCapacity map[Frontend]bool
}

// Explanation is what the model says about one address.
type Explanation struct {
	Query Query
	// Frontends are the frontends at the address, port and protocol;
	// empty when socklb leaves connects there untouched.
	Frontends []FrontendReport
	// NodeAddress: the address is one of this node's, where NodePorts
	// are served.
	NodeAddress bool
	// Ports are the frontends of Services at the address (any port),
	// when Frontends is empty: a known address at an unknown port.
	Ports []PortUse
	// AtAddress are the frontends that win at the address, at any port
	// and protocol (NodePorts left out), sorted: whether the address is
	// a published ClusterIP is the planner's question of them.
	AtAddress []PortUse
	// Unbalanced are the ports of Services at the address and port of a
	// protocol socklb does not balance (SCTP): left untouched.
	Unbalanced []UnbalancedPort
	// NotHandled are the Services with the address that socklb leaves
	// to others, with the reason.
	NotHandled []NotHandled
	// Warnings are the model's warnings about the Services with the
	// address (a port of a protocol socklb does not balance, say).
	Warnings []Warning
}

// FrontendReport explains one frontend.
type FrontendReport struct {
	// Service is the frontend as the model computes it; Backends are
	// those the plan writes (ejected members left out), empty when
	// OverCapacity.
	Service Service
	// Endpoints are every endpoint of the Service's EndpointSlices at
	// the frontend's port name and protocol, both families, sorted.
	Endpoints []EndpointReport
	// Losers are the other Services that claim the same frontend; the
	// older one wins (see Compute).
	Losers []types.NamespacedName
	// OverCapacity: the maps have no room for the frontend; Stale: they
	// keep an older version of it.
	OverCapacity, Stale bool
}

// EndpointReport is one endpoint and the rule that put it in or left it
// out.
type EndpointReport struct {
	Backend  Backend
	NodeName string
	// Ready, Serving and Terminating are its conditions (merged over its
	// sightings, as the model merges them).
	Ready, Serving, Terminating bool
	// ZoneHints and NodeHints are its topology hints.
	ZoneHints, NodeHints []string
	Reason               Reason
}

// PortUse is a frontend of a Service at the queried address.
type PortUse struct {
	Name  types.NamespacedName
	Kind  FrontendKind
	Port  uint16
	Proto Proto
}

// UnbalancedPort is a Service's port at the queried address and port of
// a protocol socklb does not balance.
type UnbalancedPort struct {
	Name     types.NamespacedName
	Protocol string
}

// NotHandled is a Service at the address that socklb does not balance.
type NotHandled struct {
	Name   types.NamespacedName
	Reason string
}

// Explain says what the model does with connects to q, from the same
// objects and rules as Compute and the facts of the node. It computes
// only the Services that have q's address.
func Explain(in Input, q Query, facts Facts) Explanation {
	ex := Explanation{Query: q}
	nodeAddrs := nodePortAddrs(in.Node.Addresses)
	_, ex.NodeAddress = slices.BinarySearchFunc(nodeAddrs, q.Addr, netip.Addr.Compare)
	node := NodeInfo{Name: in.Node.Name, Zone: in.Node.Zone}
	byService := groupSlices(in.EndpointSlices)
	var cands, all []claim
	var w warnings
	for _, svc := range in.Services {
		if svc == nil || !hasAddress(svc, q, ex.NodeAddress) {
			continue
		}
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		if why := notHandled(svc, in.ServiceSelector); why != "" {
			ex.NotHandled = append(ex.NotHandled, NotHandled{Name: name, Reason: why})
			continue
		}
		ex.Unbalanced = append(ex.Unbalanced, unbalancedAt(svc, name, q, ex.NodeAddress)...)
		fes := frontends(svc, byService[name], node, nodeAddrs, in.Defaults, &w)
		var mine, here []Service
		for _, fe := range fes {
			if fe.Frontend.Addr != q.Addr {
				continue
			}
			if fe.Kind != KindNodePort {
				here = append(here, fe)
			}
			if fe.Frontend.Port != q.Port || (q.Proto != 0 && fe.Frontend.Proto != q.Proto) {
				if fe.Kind != KindNodePort {
					ex.Ports = append(ex.Ports, PortUse{Name: name, Kind: fe.Kind, Port: fe.Frontend.Port, Proto: fe.Frontend.Proto})
				}
				continue
			}
			mine = append(mine, fe)
		}
		cands = appendClaims(cands, svc, mine)
		all = appendClaims(all, svc, here)
	}
	slices.SortFunc(all, compareClaim)
	for i, c := range all {
		if i == 0 || c.Frontend != all[i-1].Frontend {
			ex.AtAddress = append(ex.AtAddress, PortUse{Name: c.Name, Kind: c.Kind, Port: c.Frontend.Port, Proto: c.Frontend.Proto})
		}
	}
	slices.SortFunc(cands, compareClaim)
	for len(cands) > 0 {
		n := 1
		for n < len(cands) && cands[n].Frontend == cands[0].Frontend {
			n++
		}
		ex.Frontends = append(ex.Frontends, report(cands[:n], byService, node, facts))
		cands = cands[n:]
	}
	if len(ex.Frontends) > 0 {
		ex.Ports = nil
	}
	slices.SortFunc(ex.Ports, func(a, b PortUse) int {
		return Frontend{Port: a.Port, Proto: a.Proto}.Compare(Frontend{Port: b.Port, Proto: b.Proto})
	})
	ex.Ports = slices.Compact(ex.Ports)
	ex.Warnings = w.sorted()
	return ex
}

// report explains the frontend that claims (sorted, the winner first)
// are about.
func report(claims []claim, byService map[types.NamespacedName][]*discoveryv1.EndpointSlice, node NodeInfo, facts Facts) FrontendReport {
	win := claims[0].Service
	r := FrontendReport{Service: win}
	for _, c := range claims[1:] {
		if c.Name != win.Name && !slices.Contains(r.Losers, c.Name) {
			r.Losers = append(r.Losers, c.Name)
		}
	}
	var ignore warnings // parseSlices warned already, in frontends
	parsed := parseSlices(byService[win.Name], &ignore)
	fe := win.Frontend
	is4 := fe.Addr.Is4()
	local := win.TrafficLocal // set on cluster IP frontends only, as the policy applies
	cands := candidatesFor(parsed, is4, win.PortName, fe.Proto, node.Name)
	sel := newSelection(cands, local, node)
	stale, over := facts.OverCapacity[fe]
	r.OverCapacity, r.Stale = over, stale
	ejected := facts.Ejected[fe]
	for b, c := range cands {
		reason := sel.reason(c)
		switch {
		case !reason.Used():
		case over:
			reason = ReasonOverCapacity
		case slices.Contains(ejected, b):
			reason = ReasonEjected
		}
		r.Endpoints = append(r.Endpoints, endpointReport(b, c, reason))
	}
	for b, c := range candidatesFor(parsed, !is4, win.PortName, fe.Proto, node.Name) {
		r.Endpoints = append(r.Endpoints, endpointReport(b, c, ReasonOtherFamily))
	}
	slices.SortFunc(r.Endpoints, func(a, b EndpointReport) int {
		// The family's own first, each family by address.
		if a.Backend.Addr.Is4() != b.Backend.Addr.Is4() {
			if a.Backend.Addr.Is4() == is4 {
				return -1
			}
			return 1
		}
		return a.Backend.Compare(b.Backend)
	})
	r.Service.Backends = nil
	if !over {
		for _, e := range r.Endpoints {
			if e.Reason.Used() {
				r.Service.Backends = append(r.Service.Backends, e.Backend)
			}
		}
		r.Service.Ejected = slices.Clone(ejected)
	}
	return r
}

func endpointReport(b Backend, c *candidate, reason Reason) EndpointReport {
	e := EndpointReport{
		Backend: b, NodeName: c.nodeName, Reason: reason,
		Ready: c.ready, Serving: c.serving, Terminating: !c.live,
	}
	for z := range c.zones {
		e.ZoneHints = append(e.ZoneHints, z)
	}
	for n := range c.nodes {
		e.NodeHints = append(e.NodeHints, n)
	}
	slices.Sort(e.ZoneHints)
	slices.Sort(e.NodeHints)
	return e
}

// unbalancedAt lists svc's ports numbered port (or, at a node address,
// with that nodePort) of a protocol other than TCP and UDP (hasAddress
// said the address is svc's).
func unbalancedAt(svc *corev1.Service, name types.NamespacedName, q Query, atNode bool) []UnbalancedPort {
	var out []UnbalancedPort
	own := hasAddress(svc, q, false) // one of its IPs, not only the node's
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" || proto == corev1.ProtocolTCP || proto == corev1.ProtocolUDP {
			continue
		}
		if (own && p.Port == int32(q.Port)) || (atNode && p.NodePort == int32(q.Port)) {
			out = append(out, UnbalancedPort{Name: name, Protocol: string(proto)})
		}
	}
	return out
}

// hasAddress reports whether svc may have a frontend at q's address: one
// of its cluster IPs, external IPs or load balancer IPs, or this node's
// address (atNode) when it has a nodePort at q's port.
func hasAddress(svc *corev1.Service, q Query, atNode bool) bool {
	is := func(s string) bool {
		a, err := netip.ParseAddr(s)
		return err == nil && a == q.Addr
	}
	if slices.ContainsFunc(svc.Spec.ClusterIPs, is) || is(svc.Spec.ClusterIP) ||
		slices.ContainsFunc(svc.Spec.ExternalIPs, is) {
		return true
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if is(ing.IP) {
			return true
		}
	}
	if atNode {
		for _, p := range svc.Spec.Ports {
			if p.NodePort == int32(q.Port) {
				return true
			}
		}
	}
	return false
}

// notHandled says why Compute skips svc without a warning, "" when it
// does not.
func notHandled(svc *corev1.Service, sel labels.Selector) string {
	if sel != nil && !sel.Matches(labels.Set(svc.Labels)) {
		return "the agent's --service-selector does not match its labels: left to another proxy"
	}
	if v, ok := svc.Labels[labelServiceProxyName]; ok {
		return "label " + labelServiceProxyName + "=" + v + ": owned by another proxy"
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return "type ExternalName: DNS answers with a name, nothing to balance"
	}
	return ""
}

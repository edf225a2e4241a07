package lb

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// groupSlices indexes slices by the Service they belong to. A slice without
// the service-name label belongs to no Service (kube-proxy ignores it too).
func groupSlices(all []*discoveryv1.EndpointSlice) map[types.NamespacedName][]*discoveryv1.EndpointSlice {
	m := make(map[types.NamespacedName][]*discoveryv1.EndpointSlice)
	for _, s := range all {
		if s == nil {
			continue
		}
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: name}
		m[key] = append(m[key], s)
	}
	return m
}

// parsedSlice is the usable part of one EndpointSlice.
type parsedSlice struct {
	is4       bool
	ports     []slicePort
	endpoints []endpoint
}

type slicePort struct {
	name  string
	proto Proto
	port  uint16
}

type endpoint struct {
	addr                        netip.Addr
	ready, serving, terminating bool
	nodeName                    string   // "" when unset
	zoneHints, nodeHints        []string // hints.forZones and hints.forNodes names
}

// parseSlices validates slices once per service, so that a bad address is
// reported once and not once per frontend that reads the slice.
func parseSlices(all []*discoveryv1.EndpointSlice, w *warnings) []parsedSlice {
	out := make([]parsedSlice, 0, len(all))
	for _, s := range all {
		obj := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		var ps parsedSlice
		switch s.AddressType {
		case discoveryv1.AddressTypeIPv4:
			ps.is4 = true
		case discoveryv1.AddressTypeIPv6:
		case discoveryv1.AddressTypeFQDN:
			continue // names, not addresses: nothing to connect to (kube-proxy ignores them too)
		default:
			w.add(obj, "address type %q is not IPv4, IPv6 or FQDN; slice ignored", s.AddressType)
			continue
		}
		for _, p := range s.Ports {
			if p.Port == nil {
				// nil means "all ports", which no service port can name;
				// kube-proxy skips it as well.
				continue
			}
			var sp slicePort
			if p.Name != nil {
				sp.name = *p.Name
			}
			proto := corev1.ProtocolTCP // the API default for a nil protocol
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			var ok bool
			if sp.proto, ok = protoOf(proto); !ok {
				continue // no service port we serve can match it
			}
			if *p.Port < 1 || *p.Port > 65535 {
				w.add(obj, "port %q %d/%s: port number out of range; port skipped", sp.name, *p.Port, sp.proto)
				continue
			}
			sp.port = uint16(*p.Port)
			ps.ports = append(ps.ports, sp)
		}
		for _, e := range s.Endpoints {
			if len(e.Addresses) == 0 {
				w.add(obj, "endpoint without an address; skipped")
				continue
			}
			// Only the first address counts: the API defines no meaning for
			// the others and kube-proxy ignores them.
			a, err := parseAddr(e.Addresses[0])
			if err != nil {
				w.add(obj, "endpoint address %q: %v; skipped", e.Addresses[0], err)
				continue
			}
			if a.Is4() != ps.is4 {
				w.add(obj, "endpoint address %q is not of address type %s; skipped", e.Addresses[0], s.AddressType)
				continue
			}
			c := e.Conditions
			ready := c.Ready == nil || *c.Ready
			ep := endpoint{
				addr:  a,
				ready: ready,
				// The API says nil serving means true, and kube-proxy reads it
				// so; it only matters together with terminating=true.
				serving:     c.Serving == nil || *c.Serving,
				terminating: c.Terminating != nil && *c.Terminating,
			}
			if e.NodeName != nil {
				ep.nodeName = *e.NodeName
			}
			if h := e.Hints; h != nil {
				for _, z := range h.ForZones {
					ep.zoneHints = append(ep.zoneHints, z.Name)
				}
				for _, n := range h.ForNodes {
					ep.nodeHints = append(ep.nodeHints, n.Name)
				}
			}
			ps.endpoints = append(ps.endpoints, ep)
		}
		out = append(out, ps)
	}
	return out
}

// candidate is one backend as all its sightings across slices describe it.
type candidate struct {
	// live: seen as a non-terminating endpoint. A live sighting wins over
	// terminating ones: the IP was reused by a new pod while the old one
	// shuts down (kube-proxy does the same), and the new pod's conditions
	// are the ones that hold. Sightings of the same kind are merged.
	live    bool
	ready   bool
	serving bool // with !live: serving and terminating, the fallback set
	local   bool // on the node this agent runs on
	// nodeName is endpoints[].nodeName of a sighting that set it, for
	// Explain.
	nodeName string
	// zones and nodes are the union of the topology hints; nil when none.
	zones, nodes map[string]bool
}

func (c *candidate) add(e endpoint, nodeName string) {
	switch live := !e.terminating; {
	case live && !c.live:
		*c = candidate{live: true}
	case !live && c.live:
		return
	}
	c.ready = c.ready || e.ready
	c.serving = c.serving || e.serving
	// kube-proxy only knows an endpoint as local when it knows its own
	// node name.
	c.local = c.local || (nodeName != "" && e.nodeName == nodeName)
	if c.nodeName == "" {
		c.nodeName = e.nodeName
	}
	c.zones = addAll(c.zones, e.zoneHints)
	c.nodes = addAll(c.nodes, e.nodeHints)
}

func addAll(set map[string]bool, names []string) map[string]bool {
	for _, n := range names {
		if set == nil {
			set = make(map[string]bool, len(names))
		}
		set[n] = true
	}
	return set
}

// candidatesFor collects the endpoints of one frontend: those of the
// matching family, port name and protocol, one candidate per backend.
func candidatesFor(parsed []parsedSlice, is4 bool, portName string, proto Proto, nodeName string) map[Backend]*candidate {
	seen := make(map[Backend]*candidate)
	for _, ps := range parsed {
		if ps.is4 != is4 {
			continue
		}
		for _, p := range ps.ports {
			// Each slice carries its own resolved port numbers, which is how
			// a named targetPort can map to different numbers per pod.
			if p.name != portName || p.proto != proto {
				continue
			}
			for _, e := range ps.endpoints {
				b := Backend{Addr: e.addr, Port: p.port}
				c := seen[b]
				if c == nil {
					c = new(candidate)
					seen[b] = c
				}
				c.add(e, nodeName)
			}
		}
	}
	return seen
}

// chooseBackends picks the sorted backends of one frontend the way
// kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go) picks the
// endpoints of cluster-IP traffic:
//
//   - internalTrafficPolicy: Local: the ready endpoints on this node, or if
//     there are none, the serving+terminating ones on this node. Endpoints
//     elsewhere are never used, and topology hints do not apply.
//   - Cluster: the ready endpoints the topology (see topologyFor) allows,
//     or if there are none, every serving+terminating endpoint. The
//     fallback ignores topology: topologyFor only narrows the set when a
//     ready endpoint is left, so the fallback only happens when no
//     endpoint anywhere is ready.
//
// The fallback lets a service whose pods are all shutting down drain instead
// of refusing. Each candidate's fate, in or out and why, is selection's
// reason: Explain reports the same reasons.
func chooseBackends(cands map[Backend]*candidate, local bool, node NodeInfo) []Backend {
	sel := newSelection(cands, local, node)
	var out []Backend
	for b, c := range cands {
		if sel.reason(c).Used() {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, Backend.Compare)
	return out
}

// selection is the rule that chooseBackends applies to each candidate of
// one frontend.
type selection struct {
	local    bool
	node     NodeInfo
	topo     topology
	fallback bool // no candidate is in the primary set
}

func newSelection(cands map[Backend]*candidate, local bool, node NodeInfo) selection {
	s := selection{local: local, node: node, fallback: true}
	if !local {
		s.topo = topologyFor(cands, node)
	}
	for _, c := range cands {
		if s.primary(c) {
			s.fallback = false
			break
		}
	}
	return s
}

// primary: ready and, with the Local policy, on this node, or else where
// the topology allows.
func (s selection) primary(c *candidate) bool {
	if s.local {
		return c.local && c.ready
	}
	return c.ready && s.topo.allows(c, s.node)
}

// reason says why c is used or not.
func (s selection) reason(c *candidate) Reason {
	servingTerminating := !c.live && c.serving
	switch {
	case s.local && !c.local:
		return ReasonOtherNode
	case s.primary(c):
		return ReasonReady
	case s.fallback && servingTerminating:
		return ReasonServingTerminating
	case c.ready && s.topo == sameZone:
		return ReasonOtherZone
	case c.ready && s.topo == sameNode:
		return ReasonOtherNodeHint
	case servingTerminating:
		return ReasonTerminating
	case !c.live:
		return ReasonTerminatingNotServing
	}
	return ReasonNotReady
}

// topology is the narrowing topology hints ask for.
type topology int

const (
	anyTopology topology = iota // every endpoint
	sameZone                    // endpoints hinted for this node's zone
	sameNode                    // endpoints hinted for this node
)

func (t topology) allows(c *candidate, node NodeInfo) bool {
	switch t {
	case sameNode:
		return c.nodes[node.Name]
	case sameZone:
		return c.zones[node.Zone]
	}
	return true
}

// topologyFor decides, as kube-proxy's topologyModeFromHints does, whether
// the hints of the ready endpoints narrow the choice:
//
//   - same node if every ready endpoint has a node hint and one is hinted
//     for this node (trafficDistribution: PreferSameNode; kube-proxy's
//     PreferSameTrafficDistribution gate is GA and locked on since 1.35);
//   - otherwise same zone if every ready endpoint has a zone hint and one is
//     hinted for this node's zone (what PreferSameZone, PreferClose, the
//     topology-mode: Auto annotation and the older topology-aware-hints
//     annotation make the EndpointSlice controller write);
//   - otherwise no narrowing: a partly hinted set means the EndpointSlice
//     controller is mid-update or gave up, and a set without an endpoint for
//     us would leave nothing to connect to.
//
// Like kube-proxy (which stopped reading spec.trafficDistribution and the
// topology annotations itself), only the hints count: the EndpointSlice
// controller writes hints only when the service asks for them, and so hints
// in hand-made slices are obeyed whatever the service says. Endpoints that
// are not ready neither need hints nor count as hinted. Unlike kube-proxy, an
// unknown node name or zone never matches a hint, not even one with an empty
// name (which the API accepts but no controller writes): "we do not know
// where we are" must not read as "we are where the hint points".
func topologyFor(cands map[Backend]*candidate, node NodeInfo) topology {
	anyReady := false
	allNodeHints, forNode := true, false
	allZoneHints, forZone := true, false
	for _, c := range cands {
		if !c.ready {
			continue
		}
		anyReady = true
		if len(c.nodes) == 0 {
			allNodeHints = false
		} else if node.Name != "" && c.nodes[node.Name] {
			forNode = true
		}
		if len(c.zones) == 0 {
			allZoneHints = false
		} else if node.Zone != "" && c.zones[node.Zone] {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return anyTopology
	case allNodeHints && forNode:
		return sameNode
	case allZoneHints && forZone:
		return sameZone
	}
	return anyTopology
}

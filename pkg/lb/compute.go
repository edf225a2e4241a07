package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// labelServiceProxyName marks a Service as owned by another proxy. kube-proxy
// leaves such services alone whatever the value, and so do we. The constant
// lives in k8s.io/kubernetes, which we do not import for one string.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// maxAffinitySeconds is the API's upper limit for
// sessionAffinityConfig.clientIP.timeoutSeconds (one day). The constant
// lives in k8s.io/kubernetes too.
const maxAffinitySeconds = 86400

// Input is everything Compute needs. Slices may belong to services that are
// not in Services; they are ignored.
type Input struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	// Node is the node this agent runs on. Its name decides which endpoints
	// are local (internalTrafficPolicy: Local, node hints); its zone decides
	// which zone hints apply.
	Node NodeInfo
	// ServiceSelector limits the services handled to those whose labels it
	// matches; nil means every service. Services it does not match are
	// skipped without a warning: they are left to another proxy.
	ServiceSelector labels.Selector
}

// ParseServiceSelector parses a label selector in the syntax kubectl takes,
// equality- or set-based ("tier=web,environment in (production, qa)").
// An empty or blank s selects every service.
func ParseServiceSelector(s string) (labels.Selector, error) {
	if strings.TrimSpace(s) == "" {
		return labels.Everything(), nil
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("parse service selector %q: %w", s, err)
	}
	return sel, nil
}

// Compute returns the desired state for in. It never fails: objects it
// cannot use are skipped, and the reasons are returned as Warnings.
//
// It follows kube-proxy: one frontend per (cluster IP, service port) of every
// service that has a cluster IP; backends come from the EndpointSlices
// labelled with the service's name, matched by port name and protocol, taking
// ready endpoints, or serving+terminating ones when none is ready. With
// internalTrafficPolicy: Local only endpoints on in.Node count (see
// chooseBackends for that and for topology hints). Headless, ExternalName,
// service-proxy-name services and services in.ServiceSelector does not match
// are skipped without a warning: they are valid, just not ours. The output is
// sorted and does not depend on the order of the input.
func Compute(in Input) (State, []Warning) {
	var w warnings
	byService := groupSlices(in.EndpointSlices)
	var cands []Service
	for _, svc := range in.Services {
		if svc == nil {
			continue
		}
		if in.ServiceSelector != nil && !in.ServiceSelector.Matches(labels.Set(svc.Labels)) {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		cands = append(cands, frontends(svc, byService[key], in.Node, &w)...)
	}
	return State{Services: uniqueFrontends(cands, &w)}, w.sorted()
}

// Warning says why part of the input was not used.
type Warning struct {
	Object string // namespace/name of the object
	Reason string
}

func (w Warning) compare(o Warning) int {
	if c := cmp.Compare(w.Object, o.Object); c != 0 {
		return c
	}
	return cmp.Compare(w.Reason, o.Reason)
}

type warnings []Warning

func (w *warnings) add(obj types.NamespacedName, format string, args ...any) {
	*w = append(*w, Warning{Object: obj.String(), Reason: fmt.Sprintf(format, args...)})
}

// sorted returns the warnings sorted and unique: the same problem seen twice
// (a Service listed twice, say) is reported once, in a stable order.
func (w warnings) sorted() []Warning {
	slices.SortFunc(w, Warning.compare)
	return slices.Compact(w)
}

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

// frontends returns one Service per (cluster IP, usable port) of svc, with
// the backends its slices give. The result may hold duplicate frontends;
// uniqueFrontends resolves those across all services.
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node NodeInfo, w *warnings) []Service {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if _, ok := svc.Labels[labelServiceProxyName]; ok {
		return nil
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone || slices.Contains(ips, corev1.ClusterIPNone) {
		return nil // headless: DNS hands out endpoint addresses, nothing to rewrite
	}
	if len(ips) == 0 {
		// The API server always allocates one; a Service from a file may lack it.
		w.add(name, "no cluster IP; service skipped")
		return nil
	}
	addrs := make([]netip.Addr, 0, len(ips))
	for _, s := range ips {
		a, err := parseAddr(s)
		if err != nil {
			// Serving only the families that parse would half-program a
			// dual-stack service; skipping it whole makes the mistake visible.
			w.add(name, "cluster IP %q: %v; service skipped", s, err)
			return nil
		}
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)

	local := trafficLocal(svc, name, w)
	if local && node.Name == "" {
		// Without a name no endpoint can be known to be local; refusing
		// is what the policy asks for then, but it is surely a mistake.
		w.add(name, "internalTrafficPolicy is Local but the node name is unknown; no backends")
	}
	affinity := affinityTimeout(svc, name, w)
	parsed := parseSlices(eps, w)
	var out []Service
	for _, sp := range svc.Spec.Ports {
		proto, ok := protoOf(sp.Protocol)
		if !ok {
			w.add(name, "port %d/%s: protocol not load-balanced by socklb; connects to it are left untouched", sp.Port, sp.Protocol)
			continue
		}
		if sp.Port < 1 || sp.Port > 65535 {
			w.add(name, "port %d/%s: port number out of range; port skipped", sp.Port, proto)
			continue
		}
		for _, a := range addrs {
			out = append(out, Service{
				Frontend:        Frontend{Addr: a, Port: uint16(sp.Port), Proto: proto},
				Name:            name,
				PortName:        sp.Name,
				Backends:        chooseBackends(candidatesFor(parsed, a.Is4(), sp.Name, proto, node.Name), local, node),
				TrafficLocal:    local,
				AffinityTimeout: affinity,
			})
		}
	}
	return out
}

// trafficLocal reports whether svc has internalTrafficPolicy: Local. Unset
// is Cluster: that is the API default, and kube-proxy reads any value other
// than Local as Cluster too.
func trafficLocal(svc *corev1.Service, name types.NamespacedName, w *warnings) bool {
	p := svc.Spec.InternalTrafficPolicy
	switch {
	case p == nil || *p == corev1.ServiceInternalTrafficPolicyCluster:
		return false
	case *p == corev1.ServiceInternalTrafficPolicyLocal:
		return true
	}
	w.add(name, "internalTrafficPolicy %q is not Cluster or Local; treated as Cluster", *p)
	return false
}

// affinityTimeout returns the sticky-backend idle timeout of svc, 0 without
// session affinity. The API server defaults an unset timeout to 10800 s and
// rejects values outside 1..86400; objects from a file get neither, so both
// are done here.
func affinityTimeout(svc *corev1.Service, name types.NamespacedName, w *warnings) time.Duration {
	switch svc.Spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone:
		return 0
	case corev1.ServiceAffinityClientIP:
	default:
		w.add(name, "sessionAffinity %q is not None or ClientIP; treated as None", svc.Spec.SessionAffinity)
		return 0
	}
	secs := corev1.DefaultClientIPServiceAffinitySeconds
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		secs = *c.ClientIP.TimeoutSeconds
	}
	if secs < 1 || secs > maxAffinitySeconds {
		w.add(name, "sessionAffinityConfig.clientIP.timeoutSeconds %d is outside 1..%d; using the default %d",
			secs, maxAffinitySeconds, corev1.DefaultClientIPServiceAffinitySeconds)
		secs = corev1.DefaultClientIPServiceAffinitySeconds
	}
	return time.Duration(secs) * time.Second
}

// protoOf maps a Kubernetes protocol to ours. "" is TCP: that is the API
// default, and objects from a file never went through API defaulting.
func protoOf(p corev1.Protocol) (Proto, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	}
	return 0, false
}

var (
	errNotIP   = errors.New("not an IP address")
	errZone    = errors.New("has a zone")
	errMapped4 = errors.New("is IPv4-mapped IPv6")
)

// parseAddr parses a cluster or endpoint IP. Zones have no meaning for a
// service address, and a mapped IPv4 address has an ambiguous family (the API
// server rejects both in new objects), so both are refused rather than guessed.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, errNotIP
	case a.Zone() != "":
		return netip.Addr{}, errZone
	case a.Is4In6():
		return netip.Addr{}, errMapped4
	}
	return a, nil
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
// of refusing.
func chooseBackends(cands map[Backend]*candidate, local bool, node NodeInfo) []Backend {
	keep := func(use func(*candidate) bool) []Backend {
		var out []Backend
		for b, c := range cands {
			if use(c) {
				out = append(out, b)
			}
		}
		slices.SortFunc(out, Backend.Compare)
		return out
	}
	servingTerminating := func(c *candidate) bool { return !c.live && c.serving }
	if local {
		if out := keep(func(c *candidate) bool { return c.local && c.ready }); len(out) > 0 {
			return out
		}
		return keep(func(c *candidate) bool { return c.local && servingTerminating(c) })
	}
	topo := topologyFor(cands, node)
	if out := keep(func(c *candidate) bool { return c.ready && topo.allows(c, node) }); len(out) > 0 {
		return out
	}
	return keep(servingTerminating)
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

// compareService orders by frontend first, then by everything else, so that
// the choice among duplicate frontends does not depend on input order.
func compareService(a, b Service) int {
	if c := a.Frontend.Compare(b.Frontend); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Name.Namespace, b.Name.Namespace); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Name.Name, b.Name.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(a.PortName, b.PortName); c != 0 {
		return c
	}
	if a.TrafficLocal != b.TrafficLocal {
		if a.TrafficLocal {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(a.AffinityTimeout, b.AffinityTimeout); c != 0 {
		return c
	}
	return slices.CompareFunc(a.Backends, b.Backends, Backend.Compare)
}

// uniqueFrontends sorts cands and keeps one Service per frontend: the
// dataplane has one slot per frontend. Two services on one IP:port/proto can
// only come from a file or a Service listed twice; the first in sort order
// wins and the other is reported.
func uniqueFrontends(cands []Service, w *warnings) []Service {
	slices.SortFunc(cands, compareService)
	var out []Service
	for _, c := range cands {
		if n := len(out); n > 0 && out[n-1].Frontend.Compare(c.Frontend) == 0 {
			kept := out[n-1]
			if kept.Name != c.Name || kept.PortName != c.PortName {
				w.add(c.Name, "port %q: frontend %s is already used by %s port %q; ignored", c.PortName, c.Frontend, kept.Name, kept.PortName)
			}
			continue
		}
		out = append(out, c)
	}
	return out
}

package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// labelServiceProxyName marks a Service as owned by another proxy. kube-proxy
// leaves such services alone whatever the value, and so do we. The constant
// lives in k8s.io/kubernetes, which we do not import for one string.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Input is everything Compute needs. Slices may belong to services that are
// not in Services; they are ignored.
type Input struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
}

// Compute returns the desired state for in. It never fails: objects it
// cannot use are skipped, and the reasons are returned as Warnings.
//
// It follows kube-proxy: one frontend per (cluster IP, service port) of every
// service that has a cluster IP; backends come from the EndpointSlices
// labelled with the service's name, matched by port name and protocol, taking
// ready endpoints, or serving+terminating ones when none is ready. Headless,
// ExternalName and service-proxy-name services are skipped without a warning:
// they are valid, just not ours. The output is sorted and does not depend on
// the order of the input.
func Compute(in Input) (State, []Warning) {
	var w warnings
	byService := groupSlices(in.EndpointSlices)
	var cands []Service
	for _, svc := range in.Services {
		if svc == nil {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		cands = append(cands, frontends(svc, byService[key], &w)...)
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
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, w *warnings) []Service {
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
				Frontend: Frontend{Addr: a, Port: uint16(sp.Port), Proto: proto},
				Name:     name,
				PortName: sp.Name,
				Backends: backendsFor(parsed, a.Is4(), sp.Name, proto),
			})
		}
	}
	return out
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
			ps.endpoints = append(ps.endpoints, endpoint{
				addr:  a,
				ready: ready,
				// The API says nil serving means true, and kube-proxy reads it
				// so; it only matters together with terminating=true.
				serving:     c.Serving == nil || *c.Serving,
				terminating: c.Terminating != nil && *c.Terminating,
			})
		}
		out = append(out, ps)
	}
	return out
}

// backendState merges every sighting of one backend across slices.
type backendState struct {
	live        bool // seen as a non-terminating endpoint
	liveReady   bool
	termReady   bool
	termServing bool
}

// backendsFor returns the sorted, unique backends of one frontend: the ready
// endpoints of the matching family and port, or, if there are none, the
// serving+terminating ones (kube-proxy's fallback, so that a service whose
// pods are all shutting down still drains instead of refusing).
func backendsFor(parsed []parsedSlice, is4 bool, portName string, proto Proto) []Backend {
	seen := make(map[Backend]*backendState)
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
				st := seen[b]
				if st == nil {
					st = new(backendState)
					seen[b] = st
				}
				if e.terminating {
					st.termReady = st.termReady || e.ready
					st.termServing = st.termServing || e.serving
				} else {
					st.live = true
					st.liveReady = st.liveReady || e.ready
				}
			}
		}
	}
	var ready, fallback []Backend
	for b, st := range seen {
		switch {
		case st.live:
			// A live sighting wins over a terminating one: the IP was reused
			// by a new pod while the old one shuts down (kube-proxy does the
			// same), and the new pod's conditions are the ones that hold.
			if st.liveReady {
				ready = append(ready, b)
			}
		case st.termReady:
			ready = append(ready, b)
		case st.termServing:
			fallback = append(fallback, b)
		}
	}
	out := ready
	if len(out) == 0 {
		out = fallback
	}
	slices.SortFunc(out, Backend.Compare)
	return out
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

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
	// which zone hints apply; its addresses are where NodePorts are served.
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
//
// A service is also reachable from this node at its external addresses,
// each at the family of one of its cluster IPs (kube-proxy runs one proxier
// per family, and a service takes part in a family only through a cluster IP
// of it; it does not translate between families):
//
//   - KindNodePort: every port's nodePort (type NodePort or LoadBalancer,
//     nodePort set) on every address of the node, see nodePortAddrs;
//   - KindExternalIP: spec.externalIPs at each service port, whatever the
//     type, as kube-proxy does;
//   - KindLoadBalancer: status.loadBalancer.ingress[].ip at each service
//     port, see loadBalancerIPs.
//
// The backends of these frontends are those of cluster traffic: ready
// endpoints anywhere (narrowed by topology hints), else serving+terminating
// ones, whatever either traffic policy says. internalTrafficPolicy governs
// cluster IP traffic only. externalTrafficPolicy: Local (ExternalLocal)
// narrows traffic that arrives from other machines to this node's
// endpoints, but kube-proxy exempts traffic that starts on the node, which
// is the only traffic socklb sees: in the nftables proxier
// (pkg/proxy/nftables/proxier.go, syncProxyRules) the service's "external"
// chain sends pod traffic ("short-circuit pod traffic", when kube-proxy
// knows the pod CIDRs, as it does in usual setups) and traffic with a
// local source address ("fib saddr type local", "short-circuit local
// traffic") to the Cluster policy chain before the Local one; the iptables
// proxier does the same with "-m addrtype --src-type LOCAL". That is why
// ServicePort.UsesClusterEndpoints (pkg/proxy/serviceport.go) is true for
// every externally reachable port, and CategorizeEndpoints
// (pkg/proxy/topology.go) computes its Cluster endpoints even when both
// policies are Local. So a connect from this node to an ETP: Local
// NodePort works even when no endpoint runs here, as it does under
// kube-proxy; the connection behaves as if it had gone out to the load
// balancer and come back in.
//
// Compute starts from nothing each time; a Computer returns the same
// result but redoes only the Services whose objects changed.
func Compute(in Input) (State, []Warning) {
	var w warnings
	byService := groupSlices(in.EndpointSlices)
	nodeAddrs := nodePortAddrs(in.Node.Addresses)
	var cands []Service
	for _, svc := range in.Services {
		if svc == nil {
			continue
		}
		if in.ServiceSelector != nil && !in.ServiceSelector.Matches(labels.Set(svc.Labels)) {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		cands = append(cands, frontends(svc, byService[key], in.Node, nodeAddrs, &w)...)
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

// frontends returns the Services of every usable port of svc: one per
// cluster IP, and one per external address (see Compute), with the backends
// its slices give. nodeAddrs are the node's NodePort addresses, from
// nodePortAddrs. The result may hold duplicate frontends; uniqueFrontends
// resolves those across all services.
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node NodeInfo, nodeAddrs []netip.Addr, w *warnings) []Service {
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
	fam := familiesOf(addrs)
	ext := externalsOf(svc, name, fam, nodeAddrs, w)

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
		// Each family's endpoints are categorized once per port; every
		// frontend gets its own copy of the result.
		var internal, cluster [2][]Backend // indexed by familyIndex
		for _, is4 := range fam.list() {
			i := familyIndex(is4)
			cands := candidatesFor(parsed, is4, sp.Name, proto, node.Name)
			cluster[i] = chooseBackends(cands, false, node)
			internal[i] = cluster[i]
			if local {
				internal[i] = chooseBackends(cands, true, node)
			}
		}
		for _, a := range addrs {
			out = append(out, Service{
				Frontend:        Frontend{Addr: a, Port: uint16(sp.Port), Proto: proto},
				Kind:            KindClusterIP,
				Name:            name,
				PortName:        sp.Name,
				Backends:        slices.Clone(internal[familyIndex(a.Is4())]),
				TrafficLocal:    local,
				AffinityTimeout: affinity,
			})
		}
		external := func(kind FrontendKind, a netip.Addr, port uint16) {
			out = append(out, Service{
				Frontend:        Frontend{Addr: a, Port: port, Proto: proto},
				Kind:            kind,
				Name:            name,
				PortName:        sp.Name,
				Backends:        slices.Clone(cluster[familyIndex(a.Is4())]),
				ExternalLocal:   ext.local,
				AffinityTimeout: affinity,
			})
		}
		if np := nodePortOf(svc, sp, proto, name, w); np != 0 {
			for _, a := range ext.nodeAddrs {
				external(KindNodePort, a, np)
			}
		}
		for _, a := range ext.externalIPs {
			external(KindExternalIP, a, uint16(sp.Port))
		}
		for _, a := range ext.lbIPs {
			external(KindLoadBalancer, a, uint16(sp.Port))
		}
	}
	return out
}

// families says which IP families a service has cluster IPs of.
type families struct{ v4, v6 bool }

func familiesOf(addrs []netip.Addr) families {
	var f families
	for _, a := range addrs {
		if a.Is4() {
			f.v4 = true
		} else {
			f.v6 = true
		}
	}
	return f
}

func (f families) has(a netip.Addr) bool { return a.Is4() && f.v4 || a.Is6() && f.v6 }

// list returns the families as the is4 values candidatesFor takes.
func (f families) list() []bool {
	var out []bool
	if f.v4 {
		out = append(out, true)
	}
	if f.v6 {
		out = append(out, false)
	}
	return out
}

func familyIndex(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// externals are the addresses of a service's external frontends, each of a
// family the service has, sorted and unique per kind.
type externals struct {
	nodeAddrs   []netip.Addr // where nodePorts are served
	externalIPs []netip.Addr
	lbIPs       []netip.Addr
	local       bool // externalTrafficPolicy: Local
}

func externalsOf(svc *corev1.Service, name types.NamespacedName, fam families, nodeAddrs []netip.Addr, w *warnings) externals {
	var e externals
	for _, a := range nodeAddrs {
		if fam.has(a) {
			e.nodeAddrs = append(e.nodeAddrs, a)
		}
	}
	for _, s := range svc.Spec.ExternalIPs {
		a, err := parseServiceIP(s)
		switch {
		case err != nil:
			w.add(name, "externalIP %q: %v; ignored", s, err)
		case !fam.has(a):
			w.add(name, "externalIP %q is %s but the service has no cluster IP of that family; ignored", s, familyName(a))
		default:
			e.externalIPs = append(e.externalIPs, a)
		}
	}
	e.externalIPs = sortedUnique(e.externalIPs)
	e.lbIPs = loadBalancerIPs(svc, name, fam, w)
	if len(e.lbIPs) > 0 && len(svc.Spec.LoadBalancerSourceRanges) > 0 {
		// kube-proxy drops traffic to the LoadBalancer IPs from sources
		// outside the ranges. At connect() an unbound socket has no source
		// address yet (routing picks it later), so socklb cannot check it.
		w.add(name, "loadBalancerSourceRanges is not enforced for connections from this node: every local socket reaches the LoadBalancer IPs")
	}
	e.local = externalPolicyLocal(svc, name, w)
	return e
}

// loadBalancerIPs returns the usable status.loadBalancer.ingress[].ip
// addresses of svc, sorted and unique, as kube-proxy's newBaseServiceInfo
// (pkg/proxy/serviceport.go) picks them:
//
//   - entries with only a hostname are skipped: the load balancer is
//     reached through whatever the name resolves to, which is not ours to
//     short-cut;
//   - entries whose ipMode is set and is not VIP are skipped (kube-proxy's
//     IsVIPMode, pkg/proxy/util): with ipMode: Proxy the load balancer
//     does not deliver packets with the IP as destination but proxies them
//     (it may terminate TLS or add a PROXY protocol header), so a
//     connection to the IP must really go to the load balancer;
//   - IPs of a family the service has no cluster IP of are skipped, as
//     kube-proxy does not translate between families.
//
// Unlike kube-proxy we also refuse addresses that are not plain unicast
// (see parseServiceIP): a frontend on one would capture the node's own
// traffic.
func loadBalancerIPs(svc *corev1.Service, name types.NamespacedName, fam families, w *warnings) []netip.Addr {
	var out []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue
		}
		if m := ing.IPMode; m != nil && *m != corev1.LoadBalancerIPModeVIP {
			if *m != corev1.LoadBalancerIPModeProxy {
				w.add(name, "load balancer ingress %q: ipMode %q is not VIP or Proxy; ignored as kube-proxy does", ing.IP, *m)
			}
			continue
		}
		a, err := parseServiceIP(ing.IP)
		switch {
		case err != nil:
			w.add(name, "load balancer ingress %q: %v; ignored", ing.IP, err)
		case !fam.has(a):
			w.add(name, "load balancer ingress %q is %s but the service has no cluster IP of that family; ignored", ing.IP, familyName(a))
		default:
			out = append(out, a)
		}
	}
	return sortedUnique(out)
}

func sortedUnique(addrs []netip.Addr) []netip.Addr {
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// nodePortOf returns the nodePort of sp to serve, 0 for none. Only NodePort
// and LoadBalancer services have one; a LoadBalancer service with
// allocateLoadBalancerNodePorts: false has nodePort 0 and so no NodePort
// frontends, as under kube-proxy.
func nodePortOf(svc *corev1.Service, sp corev1.ServicePort, proto Proto, name types.NamespacedName, w *warnings) uint16 {
	if sp.NodePort == 0 {
		return 0
	}
	if t := svc.Spec.Type; t != corev1.ServiceTypeNodePort && t != corev1.ServiceTypeLoadBalancer {
		// The API server refuses this; kube-proxy would serve it anyway.
		w.add(name, "port %d/%s: nodePort %d on a service of type %q; nodePort ignored", sp.Port, proto, sp.NodePort, t)
		return 0
	}
	if sp.NodePort < 1 || sp.NodePort > 65535 {
		w.add(name, "port %d/%s: nodePort %d out of range; nodePort ignored", sp.Port, proto, sp.NodePort)
		return 0
	}
	return uint16(sp.NodePort)
}

// externalPolicyLocal reports whether svc has externalTrafficPolicy: Local,
// which, as kube-proxy's ExternalPolicyLocal (pkg/api/v1/service) has it,
// only a service reachable from outside can have: type NodePort or
// LoadBalancer, or a cluster IP service with externalIPs. Unset is Cluster,
// the API default.
func externalPolicyLocal(svc *corev1.Service, name types.NamespacedName, w *warnings) bool {
	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case "", corev1.ServiceTypeClusterIP:
		if len(svc.Spec.ExternalIPs) == 0 {
			return false
		}
	default:
		return false
	}
	switch p := svc.Spec.ExternalTrafficPolicy; p {
	case "", corev1.ServiceExternalTrafficPolicyCluster:
		return false
	case corev1.ServiceExternalTrafficPolicyLocal:
		return true
	default:
		w.add(name, "externalTrafficPolicy %q is not Cluster or Local; treated as Cluster", p)
		return false
	}
}

var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)

// nodePortAddrs returns the addresses NodePorts are served on: 127.0.0.1,
// ::1 and the usable addresses among the node's, sorted and unique.
// frontends keeps those of the service's families.
//
// Loopback is always served: a process on the node may well connect to
// localhost:nodePort. (kube-proxy's iptables mode serves 127.0.0.1 through
// route_localnet, its nftables mode serves no loopback NodePorts and
// neither serves ::1; at connect() no packet is routed, so socklb can serve
// both families alike.) Skipped, silently because the kernel lists such
// addresses on every node:
//
//   - IPv4-mapped IPv6: the family is ambiguous, and the node's IPv4
//     address is listed as such anyway;
//   - zoned addresses: a frontend has no zone, so it would catch the
//     address on every link, not only the one it belongs to;
//   - link-local unicast (fe80::/10, 169.254.0.0/16): they mean something
//     on one link only (IPv6 ones need a zone to be used at all), nothing
//     reaches a NodePort through them, and 169.254/16 addresses on nodes
//     belong to node-local agents (NodeLocal DNSCache, metadata proxies),
//     not to the node's service surface; kube-proxy's NodePort addresses
//     (the node IPs by default in nftables mode) do not include them;
//   - unspecified, multicast and the IPv4 broadcast address: they are not
//     the node's addresses, and connections to them must stay untouched.
func nodePortAddrs(addrs []netip.Addr) []netip.Addr {
	out := []netip.Addr{loopback4, netip.IPv6Loopback()}
	for _, a := range addrs {
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" || a.IsLinkLocalUnicast() ||
			a.IsUnspecified() || a.IsMulticast() || a == broadcast {
			continue
		}
		out = append(out, a)
	}
	return sortedUnique(out)
}

var errSpecial = errors.New("is not a unicast address a service can own")

// parseServiceIP parses an external IP or load balancer IP. Besides what
// parseAddr refuses, it refuses the addresses the API server refuses for
// externalIPs (ValidateNonSpecialIP: unspecified, loopback, link-local),
// multicast and broadcast: a frontend on 127.0.0.1:80, say, would capture
// every local connection to that port, and objects from a file are not
// validated.
func parseServiceIP(s string) (netip.Addr, error) {
	a, err := parseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if a.IsUnspecified() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a == broadcast {
		return netip.Addr{}, errSpecial
	}
	return a, nil
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
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	if c := cmpBool(a.TrafficLocal, b.TrafficLocal); c != 0 {
		return c
	}
	if c := cmpBool(a.ExternalLocal, b.ExternalLocal); c != 0 {
		return c
	}
	if c := cmp.Compare(a.AffinityTimeout, b.AffinityTimeout); c != 0 {
		return c
	}
	return slices.CompareFunc(a.Backends, b.Backends, Backend.Compare)
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// uniqueFrontends sorts cands and keeps one Service per frontend: the
// dataplane has one slot per frontend. Two services on one IP:port/proto can
// only come from broken input: a Service listed twice, a file, a node
// address that is also a cluster IP or external IP of another service, two
// services claiming one external IP. The first in sort order (by service
// name, then port name, then kind) wins and the other is reported. One
// service port reaching a frontend twice (an external IP that is also its
// load balancer IP, say) is not reported: the frontend leads to that port
// either way, and the lower kind wins, so a cluster IP keeps its
// internalTrafficPolicy.
func uniqueFrontends(cands []Service, w *warnings) []Service {
	slices.SortFunc(cands, compareService)
	var out []Service
	for len(cands) > 0 {
		n := 1
		for n < len(cands) && cands[n].Frontend.Compare(cands[0].Frontend) == 0 {
			n++
		}
		out = append(out, cands[0])
		reportDuplicates(cands[:n], w)
		cands = cands[n:]
	}
	return out
}

// reportDuplicates warns about every Service of group but the first, which
// keeps the frontend. group is the sorted candidates of one frontend.
func reportDuplicates(group []Service, w *warnings) {
	kept := group[0]
	for _, c := range group[1:] {
		switch {
		case kept.Name == c.Name && kept.PortName == c.PortName:
		case kept.Kind == KindClusterIP && c.Kind == KindClusterIP:
			w.add(c.Name, "port %q: frontend %s is already used by %s port %q; ignored", c.PortName, c.Frontend, kept.Name, kept.PortName)
		default:
			w.add(c.Name, "port %q: %s frontend %s is already used by %s port %q (%s); ignored",
				c.PortName, c.Kind, c.Frontend, kept.Name, kept.PortName, kept.Kind)
		}
	}
}

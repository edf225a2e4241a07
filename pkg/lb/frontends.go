package lb

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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

// frontends returns the Services of every usable port of svc: one per
// cluster IP, and one per external address (see Compute), with the backends
// its slices give. nodeAddrs are the node's NodePort addresses, from
// nodePortAddrs. The result may hold duplicate frontends; uniqueFrontends
// resolves those across all services.
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node NodeInfo, nodeAddrs []netip.Addr, def Defaults, w *warnings) []Service {
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
	policy := policyOf(svc, name, w)
	outlier := outlierOf(svc, name, def.OutlierDetection, w)
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
				Frontend:         Frontend{Addr: a, Port: uint16(sp.Port), Proto: proto},
				Kind:             KindClusterIP,
				Name:             name,
				PortName:         sp.Name,
				Backends:         slices.Clone(internal[familyIndex(a.Is4())]),
				TrafficLocal:     local,
				AffinityTimeout:  affinity,
				Policy:           policy,
				OutlierDetection: outlier && proto == TCP,
			})
		}
		external := func(kind FrontendKind, a netip.Addr, port uint16) {
			out = append(out, Service{
				Frontend:         Frontend{Addr: a, Port: port, Proto: proto},
				Kind:             kind,
				Name:             name,
				PortName:         sp.Name,
				Backends:         slices.Clone(cluster[familyIndex(a.Is4())]),
				ExternalLocal:    ext.local,
				AffinityTimeout:  affinity,
				Policy:           policy,
				OutlierDetection: outlier && proto == TCP,
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

package lb

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Object constructors keep the cases below short. Everything lives in the
// "default" namespace unless a case moves it with mod.

func ptr[T any](v T) *T { return &v }

// mod applies f to o and returns it, to tweak one field of a constructed object.
func mod[T any](o T, f func(T)) T {
	f(o)
	return o
}

// svc returns a ClusterIP Service; clusterIPs[0] is also spec.clusterIP, as
// the API server sets it.
func svc(name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Ports: ports},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	return s
}

func ips(s ...string) []string { return s }

func sport(name string, proto corev1.Protocol, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port}
}

// eslice returns an EndpointSlice of service svcName.
func eslice(name, svcName string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default",
			Name:      name,
			Labels:    map[string]string{discoveryv1.LabelServiceName: svcName},
		},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func v4(name, svcName string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return eslice(name, svcName, discoveryv1.AddressTypeIPv4, ports, eps...)
}

func v6(name, svcName string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return eslice(name, svcName, discoveryv1.AddressTypeIPv6, ports, eps...)
}

func eports(p ...discoveryv1.EndpointPort) []discoveryv1.EndpointPort { return p }

func eport(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

func cond(addr string, ready, serving, terminating *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
	}
}

var (
	yes = ptr(true)
	no  = ptr(false)
)

// The condition sets the EndpointSlice controller writes.
func ready(addr string) discoveryv1.Endpoint       { return cond(addr, yes, yes, no) }
func notReady(addr string) discoveryv1.Endpoint    { return cond(addr, no, no, no) }
func terminating(addr string) discoveryv1.Endpoint { return cond(addr, no, yes, yes) }

var (
	http80   = sport("http", corev1.ProtocolTCP, 80)
	http8080 = eports(eport("http", corev1.ProtocolTCP, 8080))
)

// on places an endpoint on a node.
func on(node string, e discoveryv1.Endpoint) discoveryv1.Endpoint {
	e.NodeName = &node
	return e
}

// forZones adds zone hints to an endpoint, forNodes node hints.
func forZones(e discoveryv1.Endpoint, zones ...string) discoveryv1.Endpoint {
	h := hintsOf(e)
	for _, z := range zones {
		h.ForZones = append(h.ForZones, discoveryv1.ForZone{Name: z})
	}
	e.Hints = &h
	return e
}

func forNodes(e discoveryv1.Endpoint, nodes ...string) discoveryv1.Endpoint {
	h := hintsOf(e)
	for _, n := range nodes {
		h.ForNodes = append(h.ForNodes, discoveryv1.ForNode{Name: n})
	}
	e.Hints = &h
	return e
}

// hintsOf copies e's hints, so that adding to them never changes another
// endpoint's.
func hintsOf(e discoveryv1.Endpoint) discoveryv1.EndpointHints {
	if e.Hints == nil {
		return discoveryv1.EndpointHints{}
	}
	return discoveryv1.EndpointHints{
		ForZones: slices.Clone(e.Hints.ForZones),
		ForNodes: slices.Clone(e.Hints.ForNodes),
	}
}

// Service modifiers, for mod.
func localPolicy(s *corev1.Service) {
	s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
}

func preferClose(s *corev1.Service) {
	s.Spec.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferClose)
}

func preferSameNode(s *corev1.Service) {
	s.Spec.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferSameNode)
}

func withLabels(kv ...string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Labels[kv[i]] = kv[i+1]
		}
	}
}

func clientIP(timeout *int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if timeout != nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

// nodePorts makes s a NodePort service, the nth port with the nth nodePort.
func nodePorts(np ...int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		for i, p := range np {
			s.Spec.Ports[i].NodePort = p
		}
	}
}

// loadBalancer makes s a LoadBalancer service with the given nodePorts and
// ingress entries; each ingress string is an IP, "host:NAME" for a
// hostname-only entry or "IP@MODE" for an entry with an ipMode.
func loadBalancer(np []int32, ingress ...string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		nodePorts(np...)(s)
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for _, in := range ingress {
			var ing corev1.LoadBalancerIngress
			if h, ok := strings.CutPrefix(in, "host:"); ok {
				ing.Hostname = h
			} else if ip, m, ok := strings.Cut(in, "@"); ok {
				ing.IP, ing.IPMode = ip, ptr(corev1.LoadBalancerIPMode(m))
			} else {
				ing.IP = in
			}
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, ing)
		}
	}
}

func externalIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

func externalLocal(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}

// with applies several modifiers, for mod.
func with(fs ...func(*corev1.Service)) func(*corev1.Service) {
	return func(s *corev1.Service) {
		for _, f := range fs {
			f(s)
		}
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// here is the node most topology cases run on.
var here = NodeInfo{Name: "node-a", Zone: "zone-a"}

// hereWithAddrs is here with a dual-stack address set, loopback left out as
// the agent may leave it out.
var hereWithAddrs = NodeInfo{Name: "node-a", Zone: "zone-a", Addresses: addrs("192.168.1.10", "fd00:1::10")}

// render prints a state one frontend per line, which makes diffs readable.
func render(st State) []string {
	var out []string
	for _, s := range st.Services {
		var b strings.Builder
		b.WriteString(s.Frontend.String())
		if s.Kind != KindClusterIP {
			b.WriteString(" " + s.Kind.String())
		}
		fmt.Fprintf(&b, " %s[%s]", s.Name, s.PortName)
		if s.TrafficLocal {
			b.WriteString(" local")
		}
		if s.ExternalLocal {
			b.WriteString(" extlocal")
		}
		if s.AffinityTimeout != 0 {
			fmt.Fprintf(&b, " affinity=%s", s.AffinityTimeout)
		}
		b.WriteString(" ->")
		if len(s.Backends) == 0 {
			b.WriteString(" (none)")
		}
		for _, be := range s.Backends {
			b.WriteString(" " + be.String())
		}
		out = append(out, b.String())
	}
	return out
}

// checkOutput asserts what must hold for any input: frontends and backends
// sorted and unique, backends of the frontend's family, warnings sorted.
func checkOutput(t *testing.T, st State, warns []Warning) {
	t.Helper()
	for i, s := range st.Services {
		if i > 0 && st.Services[i-1].Frontend.Compare(s.Frontend) >= 0 {
			t.Errorf("frontends not sorted and unique: %s before %s", st.Services[i-1].Frontend, s.Frontend)
		}
		if !s.Frontend.Addr.IsValid() || s.Frontend.Port == 0 || (s.Frontend.Proto != TCP && s.Frontend.Proto != UDP) {
			t.Errorf("invalid frontend %s", s.Frontend)
		}
		if s.AffinityTimeout < 0 || s.AffinityTimeout > maxAffinitySeconds*time.Second || s.AffinityTimeout%time.Second != 0 {
			t.Errorf("%s: invalid affinity timeout %s", s.Frontend, s.AffinityTimeout)
		}
		switch s.Kind {
		case KindClusterIP:
			if s.ExternalLocal {
				t.Errorf("%s: externalTrafficPolicy on a cluster IP frontend", s.Frontend)
			}
		case KindNodePort, KindExternalIP, KindLoadBalancer:
			if s.TrafficLocal {
				t.Errorf("%s: internalTrafficPolicy on a %s frontend", s.Frontend, s.Kind)
			}
			a := s.Frontend.Addr
			if a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() || a.IsLinkLocalUnicast() ||
				(a.IsLoopback() && s.Kind != KindNodePort) {
				t.Errorf("%s: %s frontend on an unusable address", s.Frontend, s.Kind)
			}
		default:
			t.Errorf("%s: unknown kind %s", s.Frontend, s.Kind)
		}
		for j, b := range s.Backends {
			if j > 0 && s.Backends[j-1].Compare(b) >= 0 {
				t.Errorf("%s: backends not sorted and unique: %s before %s", s.Frontend, s.Backends[j-1], b)
			}
			if b.Addr.Is4() != s.Frontend.Addr.Is4() || b.Port == 0 {
				t.Errorf("%s: invalid backend %s", s.Frontend, b)
			}
		}
	}
	for i := 1; i < len(warns); i++ {
		if warns[i-1].compare(warns[i]) >= 0 {
			t.Errorf("warnings not sorted and unique: %v before %v", warns[i-1], warns[i])
		}
	}
}

// reversed returns a copy of in with both lists reversed.
func reversed(in Input) Input {
	out := in
	out.Services, out.EndpointSlices = slices.Clone(in.Services), slices.Clone(in.EndpointSlices)
	slices.Reverse(out.Services)
	slices.Reverse(out.EndpointSlices)
	return out
}

func TestCompute(t *testing.T) {
	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		node     NodeInfo
		// selector is parsed with ParseServiceSelector; "" leaves
		// Input.ServiceSelector nil.
		selector string
		want     []string
		// wantWarn lists the expected warnings in order; Reason is a
		// substring of the actual reason, which is prose.
		wantWarn []Warning
	}{
		{
			name:     "cluster IP, single unnamed port",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), sport("", corev1.ProtocolTCP, 80))},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-1", "web", eports(eport("", corev1.ProtocolTCP, 8080)), ready("10.0.0.2"), ready("10.0.0.1")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			name: "multi-port service with names",
			services: []*corev1.Service{
				svc("web", ips("10.96.0.1"), sport("metrics", corev1.ProtocolTCP, 9090), http80),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-1", "web", eports(eport("http", corev1.ProtocolTCP, 8080), eport("metrics", corev1.ProtocolTCP, 9091)), ready("10.0.0.1")),
			},
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"10.96.0.1:9090/TCP default/web[metrics] -> 10.0.0.1:9091",
			},
		},
		{
			name: "TCP and UDP on the same port number",
			services: []*corev1.Service{
				svc("dns", ips("10.96.0.10"), sport("dns", corev1.ProtocolUDP, 53), sport("dns-tcp", corev1.ProtocolTCP, 53)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("dns-1", "dns", eports(eport("dns", corev1.ProtocolUDP, 1053), eport("dns-tcp", corev1.ProtocolTCP, 2053)), ready("10.0.0.1")),
			},
			want: []string{
				"10.96.0.10:53/TCP default/dns[dns-tcp] -> 10.0.0.1:2053",
				"10.96.0.10:53/UDP default/dns[dns] -> 10.0.0.1:1053",
			},
		},
		{
			name:     "slice port with the right name but another protocol is not used",
			services: []*corev1.Service{svc("dns", ips("10.96.0.10"), sport("dns", corev1.ProtocolUDP, 53))},
			slices: []*discoveryv1.EndpointSlice{
				v4("dns-1", "dns", eports(eport("dns", corev1.ProtocolTCP, 53)), ready("10.0.0.1")),
			},
			want: []string{"10.96.0.10:53/UDP default/dns[dns] -> (none)"},
		},
		{
			name:     "named targetPort resolves to a different number in each slice",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(eport("http", corev1.ProtocolTCP, 8080)), ready("10.0.0.1")),
				v4("web-b", "web", eports(eport("http", corev1.ProtocolTCP, 8081)), ready("10.0.0.2")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8081"},
		},
		{
			name:     "several slices are merged",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, ready("10.0.0.1"), ready("10.0.0.2")),
				v4("web-b", "web", http8080, ready("10.0.0.3")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"},
		},
		{
			name:     "duplicate endpoints across and within slices are deduplicated",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, ready("10.0.0.1"), ready("10.0.0.2"), ready("10.0.0.1")),
				v4("web-b", "web", http8080, ready("10.0.0.2"), ready("10.0.0.3")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"},
		},
		{
			name:     "not-ready endpoints are excluded",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, ready("10.0.0.1"), notReady("10.0.0.2")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "nil conditions count as ready",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, cond("10.0.0.1", nil, nil, nil)),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "no ready endpoint: serving and terminating ones are used",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					notReady("10.0.0.1"),
					terminating("10.0.0.2"),
					cond("10.0.0.3", no, no, yes), // terminating, not serving
				),
				v4("web-b", "web", http8080, terminating("10.0.0.4")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.2:8080 10.0.0.4:8080"},
		},
		{
			name:     "terminating endpoints are not used while one endpoint is ready",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, terminating("10.0.0.1")),
				v4("web-b", "web", http8080, ready("10.0.0.2"), terminating("10.0.0.3")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.2:8080"},
		},
		{
			// The API and kube-proxy read nil serving as true.
			name:     "nil serving on a terminating endpoint counts as serving",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, cond("10.0.0.1", no, nil, yes)),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "nil terminating means not terminating, so no fallback",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, cond("10.0.0.1", no, yes, nil)),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			// A new pod got the IP of a pod still shutting down; the new
			// pod is not ready yet, so the IP must not be used at all.
			name:     "reused IP: the live endpoint's conditions win over the terminating one",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, terminating("10.0.0.1"), terminating("10.0.0.2")),
				v4("web-b", "web", http8080, notReady("10.0.0.1")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.2:8080"},
		},
		{
			name:     "no slices: frontend without backends",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			want:     []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			name:     "only unusable endpoints: frontend without backends",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, notReady("10.0.0.1"), cond("10.0.0.2", no, no, yes)),
				v4("web-b", "web", http8080),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			name:     "slice without a matching port contributes no backends",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(eport("grpc", corev1.ProtocolTCP, 9000)), ready("10.0.0.1")),
				v4("web-b", "web", http8080, ready("10.0.0.2")),
				v4("web-c", "web", nil, ready("10.0.0.3")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.2:8080"},
		},
		{
			name:     "nil name and nil protocol in a slice port mean the unnamed TCP port",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), sport("", "", 80))},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(discoveryv1.EndpointPort{Port: ptr(int32(8080))}), ready("10.0.0.1")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[] -> 10.0.0.1:8080"},
		},
		{
			name:     "slice port with nil port number is ignored",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(discoveryv1.EndpointPort{Name: ptr("http")}), ready("10.0.0.1")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			name:     "only the first address of an endpoint is used",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, discoveryv1.Endpoint{Addresses: []string{"10.0.0.1", "10.0.0.2"}}),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "headless service is skipped",
			services: []*corev1.Service{svc("db", ips("None"), http80)},
			slices:   []*discoveryv1.EndpointSlice{v4("db-1", "db", http8080, ready("10.0.0.1"))},
		},
		{
			name: "headless service with only clusterIP set is skipped",
			services: []*corev1.Service{mod(svc("db", nil, http80), func(s *corev1.Service) {
				s.Spec.ClusterIP = corev1.ClusterIPNone
			})},
		},
		{
			name: "headless service with only clusterIPs set is skipped",
			services: []*corev1.Service{mod(svc("db", ips("None"), http80), func(s *corev1.Service) {
				s.Spec.ClusterIP = ""
			})},
		},
		{
			name: "ExternalName service is skipped",
			services: []*corev1.Service{mod(svc("ext", nil, http80), func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
			})},
		},
		{
			name: "service with service-proxy-name label is skipped, even with an empty value",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), func(s *corev1.Service) {
					s.Labels = map[string]string{labelServiceProxyName: "other-proxy"}
				}),
				mod(svc("b", ips("10.96.0.2"), http80), func(s *corev1.Service) {
					s.Labels = map[string]string{labelServiceProxyName: ""}
				}),
			},
		},
		{
			name: "NodePort and LoadBalancer services get cluster IP frontends; empty type is ClusterIP",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1"), http80), func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }),
				mod(svc("lb", ips("10.96.0.2"), http80), func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }),
				mod(svc("bare", ips("10.96.0.3"), http80), func(s *corev1.Service) { s.Spec.Type = "" }),
			},
			want: []string{
				"10.96.0.1:80/TCP default/np[http] -> (none)",
				"10.96.0.2:80/TCP default/lb[http] -> (none)",
				"10.96.0.3:80/TCP default/bare[http] -> (none)",
			},
		},
		{
			name:     "slices of other services, other namespaces or no service are ignored",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-1", "web", http8080, ready("10.0.0.1")),
				v4("other-1", "other", http8080, ready("10.0.0.2")),
				mod(v4("web-1", "web", http8080, ready("10.0.0.3")), func(s *discoveryv1.EndpointSlice) { s.Namespace = "prod" }),
				mod(v4("loose", "web", http8080, ready("10.0.0.4")), func(s *discoveryv1.EndpointSlice) { s.Labels = nil }),
				mod(v4("blank", "", http8080, ready("10.0.0.5")), func(s *discoveryv1.EndpointSlice) {}),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "slices of another address type do not feed the cluster IP",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-4", "web", http8080, ready("10.0.0.1")),
				v6("web-6", "web", http8080, ready("fd00::1")),
				eslice("web-f", "web", discoveryv1.AddressTypeFQDN, http8080, ready("db.example.com")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "dual-stack service: each family gets its own slices",
			services: []*corev1.Service{svc("web", ips("fd00:96::1", "10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-4", "web", http8080, ready("10.0.0.1")),
				v6("web-6", "web", http8080, ready("fd00::a"), ready("fd00::b")),
			},
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"[fd00:96::1]:80/TCP default/web[http] -> [fd00::a]:8080 [fd00::b]:8080",
			},
		},
		{
			name:     "IPv6 single-stack service",
			services: []*corev1.Service{svc("web", ips("fd00:96::1"), http80)},
			slices:   []*discoveryv1.EndpointSlice{v6("web-6", "web", http8080, ready("fd00::a"))},
			want:     []string{"[fd00:96::1]:80/TCP default/web[http] -> [fd00::a]:8080"},
		},
		{
			name: "clusterIP is used when clusterIPs is empty",
			services: []*corev1.Service{mod(svc("web", nil, http80), func(s *corev1.Service) {
				s.Spec.ClusterIP = "10.96.0.1"
			})},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			name: "clusterIPs wins over clusterIP",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.2"), http80), func(s *corev1.Service) {
				s.Spec.ClusterIP = "10.96.0.1"
			})},
			want: []string{"10.96.0.2:80/TCP default/web[http] -> (none)"},
		},
		{
			name:     "SCTP port is left alone with a warning, other ports are served",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), sport("sig", corev1.ProtocolSCTP, 9999), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-1", "web", eports(eport("sig", corev1.ProtocolSCTP, 9999), eport("http", corev1.ProtocolTCP, 8080)), ready("10.0.0.1")),
			},
			want:     []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
			wantWarn: []Warning{{"default/web", "port 9999/SCTP: protocol not load-balanced"}},
		},
		{
			name: "bad cluster IPs skip the service with a warning",
			services: []*corev1.Service{
				svc("a", ips("10.96.0.300"), http80),
				svc("b", ips("10.96.0.2", "fd00::zz"), http80), // one bad family skips both
				svc("c", ips("fe80::1%eth0"), http80),
				svc("d", ips("::ffff:10.96.0.4"), http80),
				svc("e", ips("10.96.0.5", ""), http80),
			},
			wantWarn: []Warning{
				{"default/a", `cluster IP "10.96.0.300": not an IP address; service skipped`},
				{"default/b", `cluster IP "fd00::zz": not an IP address; service skipped`},
				{"default/c", `cluster IP "fe80::1%eth0": has a zone`},
				{"default/d", `cluster IP "::ffff:10.96.0.4": is IPv4-mapped IPv6`},
				{"default/e", `cluster IP "": not an IP address`},
			},
		},
		{
			name:     "service without a cluster IP is skipped with a warning",
			services: []*corev1.Service{svc("web", nil, http80)},
			wantWarn: []Warning{{"default/web", "no cluster IP"}},
		},
		{
			name:     "bad endpoint addresses are skipped with a warning",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-1", "web", http8080,
					ready("10.0.0.1"),
					ready("not-an-ip"),
					ready("fe80::1%eth0"),
					ready("::ffff:10.0.0.2"),
					ready("fd00::1"),
					discoveryv1.Endpoint{},
				),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
			wantWarn: []Warning{
				{"default/web-1", `endpoint address "::ffff:10.0.0.2": is IPv4-mapped IPv6; skipped`},
				{"default/web-1", `endpoint address "fd00::1" is not of address type IPv4; skipped`},
				{"default/web-1", `endpoint address "fe80::1%eth0": has a zone; skipped`},
				{"default/web-1", `endpoint address "not-an-ip": not an IP address; skipped`},
				{"default/web-1", "endpoint without an address"},
			},
		},
		{
			name:     "out-of-range port numbers are skipped with a warning",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), sport("zero", "", 0), sport("big", "", 70000), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(eport("http", corev1.ProtocolTCP, 0)), ready("10.0.0.1")),
				v4("web-b", "web", http8080, ready("10.0.0.2")),
			},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.2:8080"},
			wantWarn: []Warning{
				{"default/web", "port 0/TCP: port number out of range"},
				{"default/web", "port 70000/TCP: port number out of range"},
				{"default/web-a", `port "http" 0/TCP: port number out of range`},
			},
		},
		{
			name:     "unknown address type is ignored with a warning",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				eslice("web-1", "web", "ipv4", http8080, ready("10.0.0.1")),
			},
			want:     []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
			wantWarn: []Warning{{"default/web-1", `address type "ipv4"`}},
		},
		{
			name: "two services on one frontend without creation times: the first by name wins, the other is warned",
			services: []*corev1.Service{
				svc("b", ips("10.96.0.1"), http80),
				svc("a", ips("10.96.0.1"), http80),
			},
			want:     []string{"10.96.0.1:80/TCP default/a[http] -> (none)"},
			wantWarn: []Warning{{"default/b", `port "http": frontend 10.96.0.1:80/TCP is also claimed by default/a port "http" (neither has a creation time, first by namespace/name); this Service's frontend is not programmed`}},
		},
		{
			name: "a service listed twice is served once, without a warning",
			services: []*corev1.Service{
				svc("web", ips("10.96.0.1"), http80),
				svc("web", ips("10.96.0.1"), http80),
			},
			slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080, ready("10.0.0.1"))},
			want:   []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name: "nil and empty objects do not panic",
			services: []*corev1.Service{
				nil,
				{},
				svc("web", ips("10.96.0.1")), // no ports
				svc("api", ips("10.96.0.2"), http80),
			},
			slices: []*discoveryv1.EndpointSlice{
				nil,
				{},
				eslice("api-1", "api", discoveryv1.AddressTypeIPv4, nil),
				eslice("api-2", "api", discoveryv1.AddressTypeIPv4,
					eports(discoveryv1.EndpointPort{}, eport("http", corev1.ProtocolTCP, 8080)),
					discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"}},
					discoveryv1.Endpoint{Addresses: []string{}},
				),
				eslice("api-3", "api", "", nil, discoveryv1.Endpoint{}),
			},
			want: []string{"10.96.0.2:80/TCP default/api[http] -> 10.0.0.1:8080"},
			wantWarn: []Warning{
				{"/", "no cluster IP"},
				{"default/api-2", "endpoint without an address"},
				{"default/api-3", `address type ""`},
			},
		},
		{
			name: "NodePort and LoadBalancer services balance their cluster IPs over their endpoints",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1", "fd00:96::1"), http80), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeNodePort
					s.Spec.Ports[0].NodePort = 30080
				}),
				mod(svc("lb", ips("10.96.0.2"), http80), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeLoadBalancer
					s.Spec.Ports[0].NodePort = 30081
					s.Spec.ExternalIPs = []string{"192.0.2.1"}
					s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.1"}}
				}),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("np-4", "np", http8080, ready("10.0.0.1")),
				v6("np-6", "np", http8080, ready("fd00::1")),
				v4("lb-4", "lb", http8080, ready("10.0.0.2"), terminating("10.0.0.3")),
			},
			want: []string{
				"10.96.0.1:80/TCP default/np[http] -> 10.0.0.1:8080",
				"10.96.0.2:80/TCP default/lb[http] -> 10.0.0.2:8080",
				"127.0.0.1:30080/TCP NodePort default/np[http] -> 10.0.0.1:8080",
				"127.0.0.1:30081/TCP NodePort default/lb[http] -> 10.0.0.2:8080",
				"192.0.2.1:80/TCP ExternalIP default/lb[http] -> 10.0.0.2:8080",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> 10.0.0.2:8080",
				"[::1]:30080/TCP NodePort default/np[http] -> [fd00::1]:8080",
				"[fd00:96::1]:80/TCP default/np[http] -> [fd00::1]:8080",
			},
		},
		{
			// No spec.selector: the EndpointSlice controller leaves the
			// service alone and a person or another controller writes the
			// slice; it matches by the service-name label like any other.
			name:     "selector-less service with a hand-made EndpointSlice",
			services: []*corev1.Service{svc("external-db", ips("10.96.0.5"), sport("pg", corev1.ProtocolTCP, 5432))},
			slices: []*discoveryv1.EndpointSlice{
				mod(v4("external-db-manual", "external-db", eports(eport("pg", corev1.ProtocolTCP, 5432)),
					discoveryv1.Endpoint{Addresses: []string{"192.0.2.10"}},
					discoveryv1.Endpoint{Addresses: []string{"192.0.2.11"}},
				), func(s *discoveryv1.EndpointSlice) {
					s.Labels[discoveryv1.LabelManagedBy] = "staff"
				}),
			},
			want: []string{"10.96.0.5:5432/TCP default/external-db[pg] -> 192.0.2.10:5432 192.0.2.11:5432"},
		},
		{
			name:     "internalTrafficPolicy Local: only endpoints on this node",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), localPolicy)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-a", ready("10.0.0.1")), on("node-b", ready("10.0.0.2")), ready("10.0.0.3")),
				v4("web-b", "web", http8080, on("node-a", ready("10.0.0.4")), on("node-a", notReady("10.0.0.5"))),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] local -> 10.0.0.1:8080 10.0.0.4:8080"},
		},
		{
			name:     "internalTrafficPolicy Local without a local endpoint: no backends, connects refused",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), localPolicy)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-b", ready("10.0.0.2")), ready("10.0.0.3")),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] local -> (none)"},
		},
		{
			// The fallback happens within the local set: a ready endpoint on
			// another node never stands in for the local ones.
			name:     "internalTrafficPolicy Local: no local ready endpoint, so local serving+terminating ones",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), localPolicy)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					on("node-a", terminating("10.0.0.1")),
					on("node-a", notReady("10.0.0.2")),
					on("node-a", cond("10.0.0.3", no, no, yes)), // terminating, not serving
					on("node-b", ready("10.0.0.4")),
					on("node-b", terminating("10.0.0.5")),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] local -> 10.0.0.1:8080"},
		},
		{
			name:     "internalTrafficPolicy Local: a local ready endpoint wins over local terminating ones",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), localPolicy)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-a", ready("10.0.0.1")), on("node-a", terminating("10.0.0.2"))),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] local -> 10.0.0.1:8080"},
		},
		{
			name:     "internalTrafficPolicy Local ignores topology hints",
			services: []*corev1.Service{mod(mod(svc("web", ips("10.96.0.1"), http80), localPolicy), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					on("node-a", forZones(ready("10.0.0.1"), "zone-b")),
					on("node-b", forZones(ready("10.0.0.2"), "zone-a")),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] local -> 10.0.0.1:8080"},
		},
		{
			name: "internalTrafficPolicy Local with an unknown node name: no backends and a warning",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80), localPolicy),
				svc("api", ips("10.96.0.2"), http80), // Cluster: not affected
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("", ready("10.0.0.1")), on("node-a", ready("10.0.0.2"))),
				v4("api-a", "api", http8080, on("", ready("10.0.0.3"))),
			},
			node: NodeInfo{Zone: "zone-a"},
			want: []string{
				"10.96.0.1:80/TCP default/web[http] local -> (none)",
				"10.96.0.2:80/TCP default/api[http] -> 10.0.0.3:8080",
			},
			wantWarn: []Warning{{"default/web", "internalTrafficPolicy is Local but the node name is unknown; no backends"}},
		},
		{
			name: "internalTrafficPolicy Cluster (explicit) uses endpoints on every node",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), func(s *corev1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyCluster)
			})},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-a", ready("10.0.0.1")), on("node-b", ready("10.0.0.2"))),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			name: "unknown internalTrafficPolicy is Cluster, with a warning",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), func(s *corev1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicy("local"))
			})},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-a", ready("10.0.0.1")), on("node-b", ready("10.0.0.2"))),
			},
			node:     here,
			want:     []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
			wantWarn: []Warning{{"default/web", `internalTrafficPolicy "local" is not Cluster or Local; treated as Cluster`}},
		},
		{
			name:     "PreferClose, every endpoint hinted, some for our zone: only those",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					forZones(ready("10.0.0.1"), "zone-a"),
					forZones(ready("10.0.0.2"), "zone-b"),
					forZones(ready("10.0.0.3"), "zone-c", "zone-a"),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.3:8080"},
		},
		{
			name:     "PreferClose, one ready endpoint without hints: every endpoint",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b")),
				v4("web-b", "web", http8080, ready("10.0.0.3")),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"},
		},
		{
			name:     "PreferClose, no endpoint hinted for our zone: every endpoint",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(ready("10.0.0.1"), "zone-b"), forZones(ready("10.0.0.2"), "zone-c")),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			name:     "PreferClose, node zone unknown: every endpoint",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b"), forZones(ready("10.0.0.3"), "")),
			},
			node: NodeInfo{Name: "node-a"},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080"},
		},
		{
			// kube-proxy only looks at the hints of ready endpoints.
			name:     "PreferClose: endpoints that are not ready need no hints",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b"), notReady("10.0.0.3"), terminating("10.0.0.4")),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "PreferClose, no ready endpoint: serving+terminating ones of every zone",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(terminating("10.0.0.1"), "zone-a"), forZones(terminating("10.0.0.2"), "zone-b"), forZones(notReady("10.0.0.3"), "zone-a")),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			// kube-proxy trusts the hints: the EndpointSlice controller only
			// writes them when the service asks for topology.
			name:     "hints are obeyed without trafficDistribution; endpoint zone alone is not a hint",
			services: []*corev1.Service{svc("web", ips("10.96.0.1"), http80), svc("api", ips("10.96.0.2"), http80)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b")),
				v4("api-a", "api", http8080,
					ready("10.0.1.1"),
					discoveryv1.Endpoint{Addresses: []string{"10.0.1.2"}, Zone: ptr("zone-a")},
					discoveryv1.Endpoint{Addresses: []string{"10.0.1.3"}, Zone: ptr("zone-b")},
				),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"10.96.0.2:80/TCP default/api[http] -> 10.0.1.1:8080 10.0.1.2:8080 10.0.1.3:8080",
			},
		},
		{
			name:     "PreferSameNode, every endpoint node-hinted, one for this node: node hints win over zone hints",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferSameNode)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					forNodes(forZones(on("node-a", ready("10.0.0.1")), "zone-a"), "node-a"),
					forNodes(forZones(on("node-b", ready("10.0.0.2")), "zone-a"), "node-b"),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "PreferSameNode, one endpoint without a node hint: zone hints decide",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferSameNode)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					forNodes(forZones(ready("10.0.0.1"), "zone-a"), "node-a"),
					forZones(ready("10.0.0.2"), "zone-a"),
					forNodes(forZones(ready("10.0.0.3"), "zone-b"), "node-c"),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			name:     "PreferSameNode, no endpoint hinted for this node: zone hints decide",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferSameNode)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080,
					forNodes(forZones(ready("10.0.0.1"), "zone-a"), "node-b"),
					forNodes(forZones(ready("10.0.0.2"), "zone-b"), "node-c"),
				),
			},
			node: here,
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080"},
		},
		{
			name:     "PreferSameNode, node name unknown and no zone hints: every endpoint",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), preferSameNode)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, forNodes(ready("10.0.0.1"), ""), forNodes(ready("10.0.0.2"), "node-b")),
			},
			node: NodeInfo{Zone: "zone-a"},
			want: []string{"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080 10.0.0.2:8080"},
		},
		{
			name:     "topology is decided per family",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1", "fd00:96::1"), http80), preferClose)},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-4", "web", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b")),
				v6("web-6", "web", http8080, forZones(ready("fd00::1"), "zone-a"), ready("fd00::2")),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"[fd00:96::1]:80/TCP default/web[http] -> [fd00::1]:8080 [fd00::2]:8080",
			},
		},
		{
			// The same endpoint in two slices (it is moving between them):
			// the sightings are merged, so the hints of either count.
			name: "duplicate endpoint sightings merge their hints and node",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80), localPolicy),
				mod(svc("api", ips("10.96.0.2"), http80), preferClose),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, ready("10.0.0.1")),
				v4("web-b", "web", http8080, on("node-a", ready("10.0.0.1"))),
				v4("api-a", "api", http8080, ready("10.0.1.1"), forZones(ready("10.0.1.2"), "zone-b")),
				v4("api-b", "api", http8080, forZones(ready("10.0.1.1"), "zone-a")),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/web[http] local -> 10.0.0.1:8080",
				"10.96.0.2:80/TCP default/api[http] -> 10.0.1.1:8080",
			},
		},
		{
			name: "reused IP: the live endpoint's node and hints win over the terminating one's",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80), localPolicy),
				mod(svc("api", ips("10.96.0.2"), http80), preferClose),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", http8080, on("node-a", terminating("10.0.0.1"))),
				v4("web-b", "web", http8080, on("node-b", ready("10.0.0.1"))),
				v4("api-a", "api", http8080, forZones(terminating("10.0.1.1"), "zone-a"), forZones(ready("10.0.1.2"), "zone-b")),
				v4("api-b", "api", http8080, forZones(ready("10.0.1.1"), "zone-b"), forZones(ready("10.0.1.3"), "zone-a")),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/web[http] local -> (none)",
				"10.96.0.2:80/TCP default/api[http] -> 10.0.1.3:8080",
			},
		},
		{
			name: "sessionAffinity ClientIP: default timeout of 3h when unset, explicit timeout otherwise",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), clientIP(nil)),
				mod(svc("b", ips("10.96.0.2"), http80), clientIP(ptr(int32(60)))),
				mod(svc("c", ips("10.96.0.3"), http80), func(s *corev1.Service) {
					clientIP(nil)(s)
					s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{}}
				}),
				mod(svc("d", ips("10.96.0.4"), http80), clientIP(ptr(int32(86400)))),
			},
			want: []string{
				"10.96.0.1:80/TCP default/a[http] affinity=3h0m0s -> (none)",
				"10.96.0.2:80/TCP default/b[http] affinity=1m0s -> (none)",
				"10.96.0.3:80/TCP default/c[http] affinity=3h0m0s -> (none)",
				"10.96.0.4:80/TCP default/d[http] affinity=24h0m0s -> (none)",
			},
		},
		{
			name: "sessionAffinity None or unset: no affinity, whatever the config says",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), func(s *corev1.Service) {
					clientIP(ptr(int32(60)))(s)
					s.Spec.SessionAffinity = corev1.ServiceAffinityNone
				}),
				mod(svc("b", ips("10.96.0.2"), http80), func(s *corev1.Service) {
					clientIP(ptr(int32(60)))(s)
					s.Spec.SessionAffinity = ""
				}),
			},
			want: []string{
				"10.96.0.1:80/TCP default/a[http] -> (none)",
				"10.96.0.2:80/TCP default/b[http] -> (none)",
			},
		},
		{
			name: "bad sessionAffinity settings are warned about",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), clientIP(ptr(int32(0)))),
				mod(svc("b", ips("10.96.0.2"), http80), clientIP(ptr(int32(86401)))),
				mod(svc("c", ips("10.96.0.3"), http80), func(s *corev1.Service) { s.Spec.SessionAffinity = "Cookie" }),
			},
			want: []string{
				"10.96.0.1:80/TCP default/a[http] affinity=3h0m0s -> (none)",
				"10.96.0.2:80/TCP default/b[http] affinity=3h0m0s -> (none)",
				"10.96.0.3:80/TCP default/c[http] -> (none)",
			},
			wantWarn: []Warning{
				{"default/a", "timeoutSeconds 0 is outside 1..86400; using the default 10800"},
				{"default/b", "timeoutSeconds 86401 is outside 1..86400"},
				{"default/c", `sessionAffinity "Cookie" is not None or ClientIP; treated as None`},
			},
		},
		{
			name: "affinity and Local are carried on every frontend of the service",
			services: []*corev1.Service{
				mod(mod(svc("web", ips("10.96.0.1", "fd00:96::1"), http80, sport("dns", corev1.ProtocolUDP, 53)), localPolicy), clientIP(ptr(int32(30)))),
			},
			node: here,
			want: []string{
				"10.96.0.1:53/UDP default/web[dns] local affinity=30s -> (none)",
				"10.96.0.1:80/TCP default/web[http] local affinity=30s -> (none)",
				"[fd00:96::1]:53/UDP default/web[dns] local affinity=30s -> (none)",
				"[fd00:96::1]:80/TCP default/web[http] local affinity=30s -> (none)",
			},
		},
		{
			name: "equality-based service selector: other services are skipped silently",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80), withLabels("tier", "web")),
				mod(svc("db", ips("10.96.0.2"), http80), withLabels("tier", "db")),
				svc("bare", ips("10.96.0.3"), http80),
				mod(svc("bad", ips("nope"), http80), withLabels("tier", "db")), // skipped before it is checked
			},
			selector: "tier=web",
			want:     []string{"10.96.0.1:80/TCP default/web[http] -> (none)"},
		},
		{
			name: "set-based service selector",
			services: []*corev1.Service{
				mod(svc("prod-backend", ips("10.96.0.1"), http80), withLabels("environment", "production", "tier", "backend")),
				mod(svc("qa", ips("10.96.0.2"), http80), withLabels("environment", "qa")),
				mod(svc("dev", ips("10.96.0.3"), http80), withLabels("environment", "dev")),
				mod(svc("prod-frontend", ips("10.96.0.4"), http80), withLabels("environment", "production", "tier", "frontend")),
				svc("bare", ips("10.96.0.5"), http80),
			},
			selector: "environment in (production, qa), tier notin (frontend)",
			want: []string{
				"10.96.0.1:80/TCP default/prod-backend[http] -> (none)",
				"10.96.0.2:80/TCP default/qa[http] -> (none)",
			},
		},
		{
			name: "service selector on label existence; service-proxy-name still wins",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), withLabels("socklb", "")),
				mod(svc("b", ips("10.96.0.2"), http80), withLabels("socklb", "yes", "canary", "1")),
				mod(svc("c", ips("10.96.0.3"), http80), withLabels("socklb", "yes", labelServiceProxyName, "other")),
				svc("d", ips("10.96.0.4"), http80),
			},
			selector: "socklb,!canary",
			want:     []string{"10.96.0.1:80/TCP default/a[http] -> (none)"},
		},
		{
			name:     "NodePort: every node address and loopback of the service's family, at the nodePort",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), nodePorts(30080))},
			slices:   []*discoveryv1.EndpointSlice{v4("web-a", "web", http8080, ready("10.0.0.1"))},
			node:     NodeInfo{Name: "node-a", Addresses: addrs("192.168.1.10", "fd00:1::10", "10.1.0.5", "127.0.0.1", "192.168.1.10")},
			want: []string{
				"10.1.0.5:30080/TCP NodePort default/web[http] -> 10.0.0.1:8080",
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"127.0.0.1:30080/TCP NodePort default/web[http] -> 10.0.0.1:8080",
				"192.168.1.10:30080/TCP NodePort default/web[http] -> 10.0.0.1:8080",
			},
		},
		{
			name:     "NodePort of an IPv6 single-stack service: IPv6 node addresses and ::1 only",
			services: []*corev1.Service{mod(svc("web", ips("fd00:96::1"), http80), nodePorts(30080))},
			slices:   []*discoveryv1.EndpointSlice{v6("web-6", "web", http8080, ready("fd00::a"))},
			node:     NodeInfo{Name: "node-a", Addresses: addrs("192.168.1.10", "fd00:1::10", "::1")},
			want: []string{
				"[::1]:30080/TCP NodePort default/web[http] -> [fd00::a]:8080",
				"[fd00:1::10]:30080/TCP NodePort default/web[http] -> [fd00::a]:8080",
				"[fd00:96::1]:80/TCP default/web[http] -> [fd00::a]:8080",
			},
		},
		{
			name: "dual-stack NodePort: each family's addresses get that family's endpoints",
			services: []*corev1.Service{
				mod(svc("dns", ips("10.96.0.10", "fd00:96::a"), sport("dns", corev1.ProtocolUDP, 53), sport("dns-tcp", corev1.ProtocolTCP, 53)), nodePorts(30053, 30054)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("dns-4", "dns", eports(eport("dns", corev1.ProtocolUDP, 1053), eport("dns-tcp", corev1.ProtocolTCP, 1053)), ready("10.0.0.1")),
				v6("dns-6", "dns", eports(eport("dns", corev1.ProtocolUDP, 1053)), ready("fd00::1")),
			},
			node: hereWithAddrs,
			want: []string{
				"10.96.0.10:53/TCP default/dns[dns-tcp] -> 10.0.0.1:1053",
				"10.96.0.10:53/UDP default/dns[dns] -> 10.0.0.1:1053",
				"127.0.0.1:30053/UDP NodePort default/dns[dns] -> 10.0.0.1:1053",
				"127.0.0.1:30054/TCP NodePort default/dns[dns-tcp] -> 10.0.0.1:1053",
				"192.168.1.10:30053/UDP NodePort default/dns[dns] -> 10.0.0.1:1053",
				"192.168.1.10:30054/TCP NodePort default/dns[dns-tcp] -> 10.0.0.1:1053",
				"[::1]:30053/UDP NodePort default/dns[dns] -> [fd00::1]:1053",
				"[::1]:30054/TCP NodePort default/dns[dns-tcp] -> (none)",
				"[fd00:1::10]:30053/UDP NodePort default/dns[dns] -> [fd00::1]:1053",
				"[fd00:1::10]:30054/TCP NodePort default/dns[dns-tcp] -> (none)",
				"[fd00:96::a]:53/TCP default/dns[dns-tcp] -> (none)",
				"[fd00:96::a]:53/UDP default/dns[dns] -> [fd00::1]:1053",
			},
		},
		{
			name:     "no node addresses: NodePorts on loopback only",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1", "fd00:96::1"), http80), nodePorts(30080))},
			node:     here,
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> (none)",
				"127.0.0.1:30080/TCP NodePort default/web[http] -> (none)",
				"[::1]:30080/TCP NodePort default/web[http] -> (none)",
				"[fd00:96::1]:80/TCP default/web[http] -> (none)",
			},
		},
		{
			name:     "node addresses that cannot carry a NodePort are skipped silently",
			services: []*corev1.Service{mod(svc("web", ips("10.96.0.1", "fd00:96::1"), http80), nodePorts(30080))},
			node: NodeInfo{Name: "node-a", Addresses: append(addrs(
				"fe80::1", "fe80::2%eth0", "fd00:1::10%eth0", "::ffff:192.168.1.11", "0.0.0.0", "::",
				"224.0.0.1", "ff02::1", "239.1.1.1", "169.254.20.10", "255.255.255.255",
				"192.168.1.10", "127.0.0.53",
			), netip.Addr{})},
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> (none)",
				"127.0.0.1:30080/TCP NodePort default/web[http] -> (none)",
				"127.0.0.53:30080/TCP NodePort default/web[http] -> (none)",
				"192.168.1.10:30080/TCP NodePort default/web[http] -> (none)",
				"[::1]:30080/TCP NodePort default/web[http] -> (none)",
				"[fd00:96::1]:80/TCP default/web[http] -> (none)",
			},
		},
		{
			name: "ports without a nodePort get none; bad nodePorts are warned about",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80, sport("admin", corev1.ProtocolTCP, 81), sport("big", corev1.ProtocolTCP, 82)), nodePorts(30080, 0, 70000)),
				mod(svc("cip", ips("10.96.0.2"), http80), func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 30081 }),
				mod(svc("bare", ips("10.96.0.3"), http80), func(s *corev1.Service) { s.Spec.Type = ""; s.Spec.Ports[0].NodePort = 30082 }),
			},
			want: []string{
				"10.96.0.1:80/TCP default/web[http] -> (none)",
				"10.96.0.1:81/TCP default/web[admin] -> (none)",
				"10.96.0.1:82/TCP default/web[big] -> (none)",
				"10.96.0.2:80/TCP default/cip[http] -> (none)",
				"10.96.0.3:80/TCP default/bare[http] -> (none)",
				"127.0.0.1:30080/TCP NodePort default/web[http] -> (none)",
			},
			wantWarn: []Warning{
				{"default/bare", `port 80/TCP: nodePort 30082 on a service of type ""; nodePort ignored`},
				{"default/cip", `port 80/TCP: nodePort 30081 on a service of type "ClusterIP"; nodePort ignored`},
				{"default/web", "port 82/TCP: nodePort 70000 out of range; nodePort ignored"},
			},
		},
		{
			name: "LoadBalancer: nodePorts and ingress IPs; hostname-only and Proxy-mode entries are skipped",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80), loadBalancer([]int32{30080},
					"198.51.100.2@VIP", "host:lb.example.com", "198.51.100.3@Proxy", "198.51.100.1", "198.51.100.1", "198.51.100.4@proxy")),
			},
			slices: []*discoveryv1.EndpointSlice{v4("lb-a", "lb", http8080, ready("10.0.0.1"))},
			node:   hereWithAddrs,
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> 10.0.0.1:8080",
				"127.0.0.1:30080/TCP NodePort default/lb[http] -> 10.0.0.1:8080",
				"192.168.1.10:30080/TCP NodePort default/lb[http] -> 10.0.0.1:8080",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> 10.0.0.1:8080",
				"198.51.100.2:80/TCP LoadBalancer default/lb[http] -> 10.0.0.1:8080",
			},
			wantWarn: []Warning{{"default/lb", `load balancer ingress "198.51.100.4": ipMode "proxy" is not VIP or Proxy; ignored`}},
		},
		{
			name: "LoadBalancer with allocateLoadBalancerNodePorts false: no NodePort frontends",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80), with(loadBalancer(nil, "198.51.100.1"), func(s *corev1.Service) {
					s.Spec.AllocateLoadBalancerNodePorts = ptr(false)
				})),
			},
			node: hereWithAddrs,
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> (none)",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> (none)",
			},
		},
		{
			name: "LoadBalancer ingress IPs: wrong family and special addresses are warned about",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80), loadBalancer(nil, "2001:db8::1", "127.0.0.1", "not-an-ip", "198.51.100.1")),
			},
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> (none)",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> (none)",
			},
			wantWarn: []Warning{
				{"default/lb", `load balancer ingress "127.0.0.1": is not a unicast address a service can own; ignored`},
				{"default/lb", `load balancer ingress "2001:db8::1" is IPv6 but the service has no cluster IP of that family; ignored`},
				{"default/lb", `load balancer ingress "not-an-ip": not an IP address; ignored`},
			},
		},
		{
			name: "dual-stack LoadBalancer: each ingress IP in its own family",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1", "fd00:96::1"), http80), loadBalancer(nil, "2001:db8::1", "198.51.100.1")),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("lb-4", "lb", http8080, ready("10.0.0.1")),
				v6("lb-6", "lb", http8080, ready("fd00::1")),
			},
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> 10.0.0.1:8080",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> 10.0.0.1:8080",
				"[2001:db8::1]:80/TCP LoadBalancer default/lb[http] -> [fd00::1]:8080",
				"[fd00:96::1]:80/TCP default/lb[http] -> [fd00::1]:8080",
			},
		},
		{
			name: "externalIPs: at every service port, on any service type; bad ones are warned about",
			services: []*corev1.Service{
				mod(svc("web", ips("10.96.0.1"), http80, sport("dns", corev1.ProtocolUDP, 53)), externalIPs(
					"192.0.2.2", "192.0.2.1", "192.0.2.1", "2001:db8::1", "127.0.0.1", "169.254.1.1", "0.0.0.0", "::ffff:192.0.2.3", "fe80::1%eth0", "224.0.0.5", "nope",
				)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("web-a", "web", eports(eport("http", corev1.ProtocolTCP, 8080), eport("dns", corev1.ProtocolUDP, 5353)), ready("10.0.0.1")),
			},
			node: hereWithAddrs,
			want: []string{
				"10.96.0.1:53/UDP default/web[dns] -> 10.0.0.1:5353",
				"10.96.0.1:80/TCP default/web[http] -> 10.0.0.1:8080",
				"192.0.2.1:53/UDP ExternalIP default/web[dns] -> 10.0.0.1:5353",
				"192.0.2.1:80/TCP ExternalIP default/web[http] -> 10.0.0.1:8080",
				"192.0.2.2:53/UDP ExternalIP default/web[dns] -> 10.0.0.1:5353",
				"192.0.2.2:80/TCP ExternalIP default/web[http] -> 10.0.0.1:8080",
			},
			wantWarn: []Warning{
				{"default/web", `externalIP "0.0.0.0": is not a unicast address a service can own; ignored`},
				{"default/web", `externalIP "127.0.0.1": is not a unicast address`},
				{"default/web", `externalIP "169.254.1.1": is not a unicast address`},
				{"default/web", `externalIP "2001:db8::1" is IPv6 but the service has no cluster IP of that family; ignored`},
				{"default/web", `externalIP "224.0.0.5": is not a unicast address`},
				{"default/web", `externalIP "::ffff:192.0.2.3": is IPv4-mapped IPv6; ignored`},
				{"default/web", `externalIP "fe80::1%eth0": has a zone; ignored`},
				{"default/web", `externalIP "nope": not an IP address; ignored`},
			},
		},
		{
			// kube-proxy sends traffic that starts on the node to the
			// Cluster endpoints whatever externalTrafficPolicy says (its
			// "short-circuit local traffic" rule), so every ready endpoint
			// serves the external frontends, the local one included.
			name: "externalTrafficPolicy Local: connections from the node use the cluster endpoints",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80), with(loadBalancer([]int32{30080}, "198.51.100.1"), externalIPs("192.0.2.1"), externalLocal)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("lb-a", "lb", http8080, on("node-a", ready("10.0.0.1")), on("node-b", ready("10.0.0.2")), on("node-a", notReady("10.0.0.3"))),
			},
			node: NodeInfo{Name: "node-a", Addresses: addrs("192.168.1.10")},
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> 10.0.0.1:8080 10.0.0.2:8080",
				"127.0.0.1:30080/TCP NodePort default/lb[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
				"192.0.2.1:80/TCP ExternalIP default/lb[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
				"192.168.1.10:30080/TCP NodePort default/lb[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
			},
		},
		{
			// Traffic from outside would be dropped here; traffic from the
			// node is short-circuited to the endpoints elsewhere.
			name: "externalTrafficPolicy Local without a local endpoint: the node still reaches the others",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1"), http80), with(nodePorts(30080), externalLocal)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("np-a", "np", http8080, on("node-b", ready("10.0.0.2")), on("node-a", terminating("10.0.0.1"))),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/np[http] -> 10.0.0.2:8080",
				"127.0.0.1:30080/TCP NodePort default/np[http] extlocal -> 10.0.0.2:8080",
			},
		},
		{
			name: "externalTrafficPolicy Local, no endpoint ready anywhere: serving+terminating ones everywhere, as for cluster traffic",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1"), http80), with(nodePorts(30080), externalLocal)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("np-a", "np", http8080, on("node-b", terminating("10.0.0.2")), on("node-a", terminating("10.0.0.1")), on("node-a", notReady("10.0.0.3"))),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/np[http] -> 10.0.0.1:8080 10.0.0.2:8080",
				"127.0.0.1:30080/TCP NodePort default/np[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
			},
		},
		{
			// internalTrafficPolicy governs the cluster IP only; the
			// external frontends use the Cluster endpoints even when both
			// policies are Local (kube-proxy's UsesClusterEndpoints).
			name: "internalTrafficPolicy Local narrows the cluster IP, not the external frontends",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1"), http80), with(nodePorts(30080), externalIPs("192.0.2.1"), localPolicy, externalLocal)),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("np-a", "np", http8080, on("node-a", ready("10.0.0.1")), on("node-b", ready("10.0.0.2"))),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/np[http] local -> 10.0.0.1:8080",
				"127.0.0.1:30080/TCP NodePort default/np[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
				"192.0.2.1:80/TCP ExternalIP default/np[http] extlocal -> 10.0.0.1:8080 10.0.0.2:8080",
			},
		},
		{
			name: "external frontends follow topology hints like cluster traffic; affinity is carried",
			services: []*corev1.Service{
				mod(svc("np", ips("10.96.0.1"), http80), with(nodePorts(30080), preferClose, clientIP(ptr(int32(60))))),
			},
			slices: []*discoveryv1.EndpointSlice{
				v4("np-a", "np", http8080, forZones(ready("10.0.0.1"), "zone-a"), forZones(ready("10.0.0.2"), "zone-b")),
			},
			node: here,
			want: []string{
				"10.96.0.1:80/TCP default/np[http] affinity=1m0s -> 10.0.0.1:8080",
				"127.0.0.1:30080/TCP NodePort default/np[http] affinity=1m0s -> 10.0.0.1:8080",
			},
		},
		{
			name: "externalTrafficPolicy: only externally reachable services have it; unknown values are Cluster",
			services: []*corev1.Service{
				mod(svc("cip-ext", ips("10.96.0.1"), http80), with(externalIPs("192.0.2.1"), externalLocal)),
				mod(svc("cip", ips("10.96.0.2"), http80), externalLocal),
				mod(svc("odd", ips("10.96.0.3"), http80), with(nodePorts(30080), func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = "local" })),
			},
			want: []string{
				"10.96.0.1:80/TCP default/cip-ext[http] -> (none)",
				"10.96.0.2:80/TCP default/cip[http] -> (none)",
				"10.96.0.3:80/TCP default/odd[http] -> (none)",
				"127.0.0.1:30080/TCP NodePort default/odd[http] -> (none)",
				"192.0.2.1:80/TCP ExternalIP default/cip-ext[http] extlocal -> (none)",
			},
			wantWarn: []Warning{{"default/odd", `externalTrafficPolicy "local" is not Cluster or Local; treated as Cluster`}},
		},
		{
			name: "loadBalancerSourceRanges is not enforced: one warning per service with LoadBalancer IPs",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80, sport("https", corev1.ProtocolTCP, 443)), with(loadBalancer(nil, "198.51.100.1", "198.51.100.2"), func(s *corev1.Service) {
					s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
				})),
				mod(svc("pending", ips("10.96.0.2"), http80), with(loadBalancer(nil), func(s *corev1.Service) {
					s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
				})),
			},
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> (none)",
				"10.96.0.1:443/TCP default/lb[https] -> (none)",
				"10.96.0.2:80/TCP default/pending[http] -> (none)",
				"198.51.100.1:80/TCP LoadBalancer default/lb[http] -> (none)",
				"198.51.100.1:443/TCP LoadBalancer default/lb[https] -> (none)",
				"198.51.100.2:80/TCP LoadBalancer default/lb[http] -> (none)",
				"198.51.100.2:443/TCP LoadBalancer default/lb[https] -> (none)",
			},
			wantWarn: []Warning{{"default/lb", "loadBalancerSourceRanges is not enforced for connections from this node"}},
		},
		{
			// Broken input: a node address that is another service's
			// cluster IP. Without creation times the first by name wins,
			// whatever the kinds.
			name: "a NodePort frontend on another service's cluster IP: the first by name wins, the other is warned",
			services: []*corev1.Service{
				mod(svc("a", ips("10.96.0.1"), http80), nodePorts(30080)),
				svc("b", ips("10.96.0.5"), sport("http", corev1.ProtocolTCP, 30080)),
				mod(svc("c", ips("10.96.0.6"), http80), externalIPs("192.0.2.1")),
				mod(svc("d", ips("10.96.0.7"), http80), externalIPs("192.0.2.1")),
			},
			node: NodeInfo{Addresses: addrs("10.96.0.5")},
			want: []string{
				"10.96.0.1:80/TCP default/a[http] -> (none)",
				"10.96.0.5:30080/TCP NodePort default/a[http] -> (none)",
				"10.96.0.6:80/TCP default/c[http] -> (none)",
				"10.96.0.7:80/TCP default/d[http] -> (none)",
				"127.0.0.1:30080/TCP NodePort default/a[http] -> (none)",
				"192.0.2.1:80/TCP ExternalIP default/c[http] -> (none)",
			},
			wantWarn: []Warning{
				{"default/b", `port "http": ClusterIP frontend 10.96.0.5:30080/TCP is also claimed by default/a port "http" (NodePort; neither has a creation time, first by namespace/name); this Service's frontend is not programmed`},
				{"default/d", `port "http": ExternalIP frontend 192.0.2.1:80/TCP is also claimed by default/c port "http" (ExternalIP; neither has a creation time, first by namespace/name); this Service's frontend is not programmed`},
			},
		},
		{
			name: "an external IP that is also the service's load balancer IP is served once, silently",
			services: []*corev1.Service{
				mod(svc("lb", ips("10.96.0.1"), http80), with(loadBalancer(nil, "192.0.2.1"), externalIPs("192.0.2.1"))),
			},
			want: []string{
				"10.96.0.1:80/TCP default/lb[http] -> (none)",
				"192.0.2.1:80/TCP ExternalIP default/lb[http] -> (none)",
			},
		},
		{
			name: "headless and ExternalName services get no external frontends",
			services: []*corev1.Service{
				mod(svc("db", ips("None"), http80), with(nodePorts(30080), externalIPs("192.0.2.1"))),
				mod(svc("ext", nil, http80), func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeExternalName
					s.Spec.ExternalIPs = []string{"192.0.2.2"}
				}),
			},
			node: hereWithAddrs,
		},
		{
			name: "empty input",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Services: tt.services, EndpointSlices: tt.slices, Node: tt.node}
			if tt.selector != "" {
				sel, err := ParseServiceSelector(tt.selector)
				if err != nil {
					t.Fatal(err)
				}
				in.ServiceSelector = sel
			}
			st, warns := Compute(in)
			checkOutput(t, st, warns)
			checkExplainAgrees(t, in, st)
			if got := render(st); !slices.Equal(got, tt.want) {
				t.Errorf("state:\ngot:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(tt.want, "\n\t"))
			}
			if !warningsMatch(warns, tt.wantWarn) {
				t.Errorf("warnings:\ngot:  %q\nwant: %q", warns, tt.wantWarn)
			}
			// Every case doubles as an order test.
			st2, warns2 := Compute(reversed(in))
			if !slices.Equal(render(st2), render(st)) || !slices.Equal(warns2, warns) {
				t.Errorf("reversed input changed the output:\n%q %q\n%q %q", render(st), warns, render(st2), warns2)
			}
		})
	}
}

func TestParseServiceSelector(t *testing.T) {
	tests := []struct {
		in      string
		match   []labels.Set
		nomatch []labels.Set
		wantErr bool
	}{
		{in: "", match: []labels.Set{nil, {"a": "b"}}},
		{in: "  ", match: []labels.Set{nil, {"a": "b"}}},
		{in: "tier=web", match: []labels.Set{{"tier": "web"}}, nomatch: []labels.Set{nil, {"tier": "db"}}},
		{in: "tier!=web", match: []labels.Set{nil, {"tier": "db"}}, nomatch: []labels.Set{{"tier": "web"}}},
		{
			in:      "environment in (production, qa), tier notin (frontend)",
			match:   []labels.Set{{"environment": "qa"}, {"environment": "production", "tier": "backend"}},
			nomatch: []labels.Set{nil, {"environment": "dev"}, {"environment": "qa", "tier": "frontend"}},
		},
		{in: "socklb,!canary", match: []labels.Set{{"socklb": ""}}, nomatch: []labels.Set{nil, {"socklb": "", "canary": "x"}}},
		{in: "tier in (web", wantErr: true},
		{in: "=web", wantErr: true},
		{in: "tier==web==x", wantErr: true},
		{in: "Not A Label=x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			sel, err := ParseServiceSelector(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got selector %q, want an error", sel)
				}
				if msg := err.Error(); !strings.HasPrefix(msg, "parse service selector "+strconv.Quote(tt.in)+": ") {
					t.Errorf("error %q lacks the context", msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range tt.match {
				if !sel.Matches(l) {
					t.Errorf("%q does not match %v", sel, l)
				}
			}
			for _, l := range tt.nomatch {
				if sel.Matches(l) {
					t.Errorf("%q matches %v", sel, l)
				}
			}
		})
	}
}

func warningsMatch(got, want []Warning) bool {
	return slices.EqualFunc(got, want, func(g, w Warning) bool {
		return g.Object == w.Object && strings.Contains(g.Reason, w.Reason)
	})
}

// TestComputeOrderIndependent shuffles one input with every kind of object
// in it and checks that the output never changes.
func TestComputeOrderIndependent(t *testing.T) {
	in := Input{
		Node: NodeInfo{Name: "node-a", Zone: "zone-a", Addresses: addrs("192.168.1.10", "fd00:1::10", "fe80::1", "10.96.0.2")},
		Services: []*corev1.Service{
			mod(svc("local", ips("10.96.0.3"), http80), localPolicy),
			mod(svc("np", ips("10.96.0.5", "fd00:96::5"), http80, sport("", corev1.ProtocolTCP, 443)), with(nodePorts(30080, 30443), externalLocal, externalIPs("192.0.2.1", "fd00:2::1", "bad"))),
			mod(svc("lb", ips("10.96.0.6"), http80), with(loadBalancer([]int32{443}, "192.0.2.1", "198.51.100.1", "198.51.100.2@Proxy", "host:x"), func(s *corev1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
			})),
			mod(svc("close", ips("10.96.0.4"), http80), clientIP(nil)),
			svc("web", ips("10.96.0.1", "fd00:96::1"), http80, sport("dns", corev1.ProtocolUDP, 53), sport("sig", corev1.ProtocolSCTP, 9)),
			svc("api", ips("10.96.0.2"), sport("", "", 443)),
			svc("dup", ips("10.96.0.2"), sport("", "", 443)),
			svc("bad", ips("nope"), http80),
			svc("db", ips("None"), http80),
			nil,
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			v4("web-a", "web", eports(eport("http", corev1.ProtocolTCP, 8080), eport("dns", corev1.ProtocolUDP, 5353)),
				ready("10.0.0.1"), notReady("10.0.0.2"), terminating("10.0.0.3")),
			v4("web-b", "web", eports(eport("http", corev1.ProtocolTCP, 8081)), ready("10.0.0.4"), ready("10.0.0.1"), ready("bogus")),
			v6("web-c", "web", http8080, terminating("fd00::1"), terminating("fd00::2")),
			v6("web-d", "web", http8080, notReady("fd00::1")),
			v4("api-a", "api", eports(discoveryv1.EndpointPort{Port: ptr(int32(8443))}), ready("10.0.1.1")),
			v4("api-b", "api", eports(eport("", corev1.ProtocolTCP, 8443)), ready("10.0.1.2"), ready("10.0.1.1")),
			v4("db-a", "db", http8080, ready("10.0.2.1")),
			v4("local-a", "local", http8080, on("node-a", terminating("10.0.3.1")), on("node-b", ready("10.0.3.2"))),
			v4("local-b", "local", http8080, on("node-a", ready("10.0.3.1")), on("node-a", terminating("10.0.3.3"))),
			v4("close-a", "close", http8080, forZones(ready("10.0.4.1"), "zone-a"), forZones(terminating("10.0.4.2"), "zone-a")),
			v4("close-b", "close", http8080, forZones(ready("10.0.4.2"), "zone-b"), forZones(ready("10.0.4.3"), "zone-b", "zone-a")),
			v4("np-a", "np", http8080, on("node-a", ready("10.0.5.1")), on("node-b", ready("10.0.5.2"))),
			v6("np-b", "np", eports(eport("http", corev1.ProtocolTCP, 8080), eport("", corev1.ProtocolTCP, 8443)), on("node-b", ready("fd00::5:1"))),
			v4("lb-a", "lb", http8080, terminating("10.0.6.1"), notReady("10.0.6.2")),
			nil,
		},
	}
	wantState, wantWarns := Compute(in)
	checkOutput(t, wantState, wantWarns)
	if len(wantState.Services) == 0 || len(wantWarns) == 0 {
		t.Fatalf("test input too weak: %d frontends, %d warnings", len(wantState.Services), len(wantWarns))
	}
	rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: a failure must reproduce
	for i := range 50 {
		shuffled := in
		shuffled.Services, shuffled.EndpointSlices = slices.Clone(in.Services), slices.Clone(in.EndpointSlices)
		rng.Shuffle(len(shuffled.Services), func(a, b int) {
			shuffled.Services[a], shuffled.Services[b] = shuffled.Services[b], shuffled.Services[a]
		})
		rng.Shuffle(len(shuffled.EndpointSlices), func(a, b int) {
			shuffled.EndpointSlices[a], shuffled.EndpointSlices[b] = shuffled.EndpointSlices[b], shuffled.EndpointSlices[a]
		})
		st, warns := Compute(shuffled)
		if !slices.Equal(render(st), render(wantState)) || !slices.Equal(warns, wantWarns) {
			t.Fatalf("shuffle %d changed the output:\ngot:  %q\n      %q\nwant: %q\n      %q", i, render(st), warns, render(wantState), wantWarns)
		}
	}
}

// fuzzBytes hands out choices from fuzz input; once the input runs out every
// choice is the first option, so every input builds a finite set of objects.
type fuzzBytes []byte

func (b *fuzzBytes) next() int {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return int(c)
}

func pick[T any](b *fuzzBytes, options ...T) T { return options[b.next()%len(options)] }

// maybe returns nil or a pointer to one of options, to exercise nil fields.
func maybe[T any](b *fuzzBytes, options ...T) *T {
	if b.next()%3 == 0 {
		return nil
	}
	return ptr(pick(b, options...))
}

var (
	fuzzNames  = []string{"s", "t", ""}
	fuzzNS     = []string{"default", "", "other"}
	fuzzIPs    = []string{"10.96.0.1", "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2", "None", "", "bogus", "::ffff:10.0.0.1", "fe80::1%eth0", "1.2.3.4.5"}
	fuzzProtos = []corev1.Protocol{"", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "x"}
	fuzzPorts  = []int32{80, 8080, 53, 0, -1, 65535, 65536, 1 << 30}
	fuzzTypes  = []corev1.ServiceType{"", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName, "x"}
	fuzzAT     = []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN, "", "x"}
	fuzzNodes  = []string{"n1", "n2", ""}
	fuzzZones  = []string{"z1", "z2", ""}
	fuzzITP    = []corev1.ServiceInternalTrafficPolicy{corev1.ServiceInternalTrafficPolicyLocal, corev1.ServiceInternalTrafficPolicyCluster, "x"}
	fuzzTD     = []string{corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone, corev1.ServiceTrafficDistributionPreferSameNode, "x"}
	fuzzSA     = []corev1.ServiceAffinity{"", corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP, "x"}
	fuzzTO     = []int32{1, 10800, 86400, 0, -1, 86401, 1 << 30}
	fuzzLabels = []string{"tier", "env", labelServiceProxyName}
	fuzzValues = []string{"web", "db", ""}
	fuzzSel    = []string{"tier=web", "env in (web, db), tier notin (db)", "tier,!env", "!tier"}
	fuzzETP    = []corev1.ServiceExternalTrafficPolicy{"", corev1.ServiceExternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyCluster, "x"}
	fuzzExtIPs = []string{"192.0.2.1", "10.96.0.1", "fd00::1", "2001:db8::1", "127.0.0.1", "::1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "bogus", "", "::ffff:192.0.2.1"}
	fuzzModes  = []corev1.LoadBalancerIPMode{corev1.LoadBalancerIPModeVIP, corev1.LoadBalancerIPModeProxy, "x"}
	fuzzRanges = []string{"0.0.0.0/0", "203.0.113.0/24", "bogus"}
	// fuzzCreated are creation times: unset, and two in one second.
	fuzzCreated = []time.Time{{}, t0, t0.Add(time.Second), t0.Add(1500 * time.Millisecond)}
	// fuzzNodeAddrs includes the zero Addr and every kind nodePortAddrs skips.
	fuzzNodeAddrs = []netip.Addr{
		{}, netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00::1"),
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("fe80::1"),
		netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("::ffff:192.168.1.10"), netip.MustParseAddr("0.0.0.0"),
		netip.MustParseAddr("ff02::1"), netip.MustParseAddr("169.254.20.10"), netip.MustParseAddr("255.255.255.255"),
	}
)

func fuzzInput(b *fuzzBytes) Input {
	var in Input
	in.Node = NodeInfo{Name: pick(b, fuzzNodes...), Zone: pick(b, fuzzZones...)}
	for range b.next() % 4 {
		in.Node.Addresses = append(in.Node.Addresses, pick(b, fuzzNodeAddrs...))
	}
	if sel := b.next() % (len(fuzzSel) + 2); sel < len(fuzzSel) {
		s, err := ParseServiceSelector(fuzzSel[sel])
		if err != nil {
			panic(err)
		}
		in.ServiceSelector = s
	} else if sel == len(fuzzSel) {
		in.ServiceSelector = labels.Everything()
	}
	for range b.next() % 4 {
		if b.next()%8 == 0 {
			in.Services = append(in.Services, nil)
			continue
		}
		s := &corev1.Service{}
		s.Namespace, s.Name = pick(b, fuzzNS...), pick(b, fuzzNames...)
		for range b.next() % 3 {
			if s.Labels == nil {
				s.Labels = map[string]string{}
			}
			s.Labels[pick(b, fuzzLabels...)] = pick(b, fuzzValues...)
		}
		s.CreationTimestamp = metav1.NewTime(pick(b, fuzzCreated...))
		s.Spec.Type = pick(b, fuzzTypes...)
		s.Spec.InternalTrafficPolicy = maybe(b, fuzzITP...)
		s.Spec.TrafficDistribution = maybe(b, fuzzTD...)
		s.Spec.SessionAffinity = pick(b, fuzzSA...)
		switch b.next() % 4 {
		case 1:
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{}
		case 2:
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: maybe(b, fuzzTO...)}}
		}
		s.Spec.ClusterIP = pick(b, fuzzIPs...)
		for range b.next() % 3 {
			s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, pick(b, fuzzIPs...))
		}
		for range b.next() % 4 {
			p := sport(pick(b, fuzzNames...), pick(b, fuzzProtos...), pick(b, fuzzPorts...))
			if b.next()%2 == 0 {
				p.NodePort = pick(b, fuzzPorts...)
			}
			s.Spec.Ports = append(s.Spec.Ports, p)
		}
		s.Spec.ExternalTrafficPolicy = pick(b, fuzzETP...)
		for range b.next() % 3 {
			s.Spec.ExternalIPs = append(s.Spec.ExternalIPs, pick(b, fuzzExtIPs...))
		}
		for range b.next() % 3 {
			var ing corev1.LoadBalancerIngress
			if b.next()%4 != 0 {
				ing.IP = pick(b, fuzzExtIPs...)
			}
			if b.next()%4 == 0 {
				ing.Hostname = "lb.example.com"
			}
			ing.IPMode = maybe(b, fuzzModes...)
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, ing)
		}
		if b.next()%3 == 0 {
			s.Spec.LoadBalancerSourceRanges = []string{pick(b, fuzzRanges...)}
		}
		in.Services = append(in.Services, s)
	}
	for range b.next() % 5 {
		if b.next()%8 == 0 {
			in.EndpointSlices = append(in.EndpointSlices, nil)
			continue
		}
		s := &discoveryv1.EndpointSlice{AddressType: pick(b, fuzzAT...)}
		s.Namespace, s.Name = pick(b, fuzzNS...), pick(b, fuzzNames...)
		if b.next()%4 != 0 {
			s.Labels = map[string]string{discoveryv1.LabelServiceName: pick(b, fuzzNames...)}
		}
		for range b.next() % 4 {
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{
				Name:     maybe(b, fuzzNames...),
				Protocol: maybe(b, fuzzProtos...),
				Port:     maybe(b, fuzzPorts...),
			})
		}
		for range b.next() % 5 {
			var e discoveryv1.Endpoint
			for range b.next() % 3 {
				e.Addresses = append(e.Addresses, pick(b, fuzzIPs...))
			}
			e.Conditions.Ready = maybe(b, true, false)
			e.Conditions.Serving = maybe(b, true, false)
			e.Conditions.Terminating = maybe(b, true, false)
			e.NodeName = maybe(b, fuzzNodes...)
			if b.next()%3 != 0 {
				e.Hints = &discoveryv1.EndpointHints{}
				for range b.next() % 3 {
					e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: pick(b, fuzzZones...)})
				}
				for range b.next() % 3 {
					e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: pick(b, fuzzNodes...)})
				}
			}
			s.Endpoints = append(s.Endpoints, e)
		}
		in.EndpointSlices = append(in.EndpointSlices, s)
	}
	return in
}

func FuzzCompute(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 2, 1, 1, 1})
	f.Add([]byte("a dual-stack service with some slices and endpoints in it, hopefully"))
	f.Add([]byte("NodePort, LoadBalancer ingress, externalIPs and externalTrafficPolicy: Local on a node with addresses"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := fuzzBytes(data)
		in := fuzzInput(&b)
		st, warns := Compute(in)
		checkOutput(t, st, warns)
		checkExplainAgrees(t, in, st)
		nodeAddrs := nodePortAddrs(in.Node.Addresses)
		for _, s := range st.Services {
			if s.TrafficLocal && in.Node.Name == "" && len(s.Backends) > 0 {
				t.Errorf("%s: Local service with backends on a node without a name", s.Frontend)
			}
			if s.Kind == KindNodePort && !slices.Contains(nodeAddrs, s.Frontend.Addr) {
				t.Errorf("%s: NodePort frontend on an address the node does not serve NodePorts on", s.Frontend)
			}
		}
		st2, warns2 := Compute(reversed(in))
		if !slices.Equal(render(st2), render(st)) || !slices.Equal(warns2, warns) {
			t.Errorf("reversed input changed the output:\n%q %q\n%q %q", render(st), warns, render(st2), warns2)
		}
	})
}

func TestFrontendKindString(t *testing.T) {
	for k, want := range map[FrontendKind]string{
		KindClusterIP:    "ClusterIP",
		KindNodePort:     "NodePort",
		KindExternalIP:   "ExternalIP",
		KindLoadBalancer: "LoadBalancer",
		FrontendKind(9):  "kind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("FrontendKind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
	var zero Service
	if zero.Kind != KindClusterIP {
		t.Errorf("zero Kind is %s, want ClusterIP", zero.Kind)
	}
}

// TestComputeBackendsNotShared checks that frontends of one service port do
// not share a backing array: a caller changing one must not change another.
func TestComputeBackendsNotShared(t *testing.T) {
	st, _ := Compute(Input{
		Node:           hereWithAddrs,
		Services:       []*corev1.Service{mod(svc("web", ips("10.96.0.1"), http80), with(nodePorts(30080), externalIPs("192.0.2.1")))},
		EndpointSlices: []*discoveryv1.EndpointSlice{v4("web-a", "web", http8080, ready("10.0.0.1"))},
	})
	if len(st.Services) != 4 {
		t.Fatalf("got %d frontends, want 4: %q", len(st.Services), render(st))
	}
	st.Services[0].Backends[0].Port = 1
	for _, s := range st.Services[1:] {
		if s.Backends[0].Port != 8080 {
			t.Errorf("%s shares its backends with %s", s.Frontend, st.Services[0].Frontend)
		}
	}
}

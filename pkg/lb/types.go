// Package lb is socklb's pure model: it turns Kubernetes Services and
// EndpointSlices into the desired load-balancing state (frontends, each with
// its ordered backends). It makes no syscalls and reads no clocks; its output
// is sorted so that the same input always gives the same state.
package lb

import (
	"cmp"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Proto is an IP protocol number as the kernel uses it.
type Proto uint8

// Protocols socklb load-balances.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	default:
		return fmt.Sprintf("proto(%d)", uint8(p))
	}
}

// Frontend is the address a client connects to: a service IP, port and protocol.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), f.Proto)
}

// Compare orders frontends by address, then port, then protocol.
func (f Frontend) Compare(o Frontend) int {
	if c := f.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(f.Port, o.Port), cmp.Compare(f.Proto, o.Proto))
}

// Backend is one endpoint address and target port a frontend balances over.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

func (b Backend) String() string { return netip.AddrPortFrom(b.Addr, b.Port).String() }

// Compare orders backends by address, then port.
func (b Backend) Compare(o Backend) int {
	if c := b.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	return cmp.Compare(b.Port, o.Port)
}

// FrontendKind says which part of a Service a frontend comes from.
type FrontendKind uint8

// Frontend kinds. The zero value is a cluster IP, so that a Service built
// without a Kind means what it meant before kinds existed.
const (
	// KindClusterIP: spec.clusterIPs at a service port.
	KindClusterIP FrontendKind = iota
	// KindNodePort: a node address (or loopback) at a port's nodePort.
	KindNodePort
	// KindExternalIP: spec.externalIPs at a service port.
	KindExternalIP
	// KindLoadBalancer: status.loadBalancer.ingress[].ip at a service port.
	KindLoadBalancer
)

func (k FrontendKind) String() string {
	switch k {
	case KindClusterIP:
		return "ClusterIP"
	case KindNodePort:
		return "NodePort"
	case KindExternalIP:
		return "ExternalIP"
	case KindLoadBalancer:
		return "LoadBalancer"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// Service is the desired state of one frontend.
type Service struct {
	Frontend Frontend
	// Kind says where the frontend's address and port come from.
	Kind FrontendKind
	// Name is the Service this frontend belongs to.
	Name types.NamespacedName
	// PortName is the name of the Service port ("" for a single unnamed port).
	PortName string
	// Backends are sorted and unique. Empty means connects are refused.
	Backends []Backend
	// TrafficLocal is set on the cluster IP frontends of a service with
	// internalTrafficPolicy: Local. Backends then hold only endpoints on
	// this node. The policy does not apply to the other kinds.
	TrafficLocal bool
	// ExternalLocal is set on the NodePort, ExternalIP and LoadBalancer
	// frontends of a service with externalTrafficPolicy: Local. It does not
	// narrow Backends: connections from this node are exempt from the
	// policy, as kube-proxy exempts them (see Compute). It is there for
	// the dataplane and for people reading the state.
	ExternalLocal bool
	// AffinityTimeout is the idle time after which a client's sticky
	// backend is forgotten (sessionAffinity: ClientIP). 0 means no affinity.
	AffinityTimeout time.Duration
	// Policy is how a connect picks among Backends when no affinity holds
	// (annotation socklb.io/lb-policy).
	Policy Policy
	// OutlierDetection says whether backends that fail TCP connects from
	// this node are ejected (annotation socklb.io/outlier-detection, else
	// Input.Defaults). Only TCP frontends have it.
	OutlierDetection bool
	// Ejected are members of the Service left out of Backends for now by
	// outlier ejection (package outlier sets them; the model never does).
	// They are still members: their sockets are not stale.
	Ejected []Backend
}

// NodeInfo describes the node this agent runs on.
type NodeInfo struct {
	// Name is the Node object's name, as EndpointSlices give it in
	// endpoints[].nodeName. Empty means unknown.
	Name string
	// Zone is the node's topology.kubernetes.io/zone label. Empty means
	// unknown.
	Zone string
	// Addresses are this node's local addresses, where NodePorts are
	// served. Order and duplicates do not matter. 127.0.0.1 and ::1 are
	// always added, so the caller may leave loopback out; addresses that
	// cannot carry a NodePort (link-local, multicast, ...) are skipped, so
	// the caller may pass every address the kernel lists.
	Addresses []netip.Addr
}

// State is the complete desired state, sorted by frontend.
type State struct {
	Services []Service
}

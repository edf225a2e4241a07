package lb

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

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
	// Defaults are the agent's choices for Services whose annotations
	// do not say.
	Defaults Defaults
}

// Defaults are per-Service choices that annotations override.
type Defaults struct {
	// OutlierDetection: whether a Service without the
	// socklb.io/outlier-detection annotation ejects failing backends.
	OutlierDetection bool
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
// A frontend that two Services claim (broken input: a file, a cluster IP
// given out twice, a node address that is another service's IP) is
// programmed once, for the Service created first (metadata.creationTimestamp;
// one without it loses to one with it); between equal or missing times,
// as in a file, where objects usually have none, the first by
// namespace/name. The warning goes to the losing Service and names the
// winner; see uniqueFrontends.
//
// Compute starts from nothing each time; a Computer returns the same
// result but redoes only the Services whose objects changed.
func Compute(in Input) (State, []Warning) {
	var w warnings
	byService := groupSlices(in.EndpointSlices)
	nodeAddrs := nodePortAddrs(in.Node.Addresses)
	var cands []claim
	for _, svc := range in.Services {
		if svc == nil {
			continue
		}
		if in.ServiceSelector != nil && !in.ServiceSelector.Matches(labels.Set(svc.Labels)) {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		cands = appendClaims(cands, svc, frontends(svc, byService[key], in.Node, nodeAddrs, in.Defaults, &w))
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

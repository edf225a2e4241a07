package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// checkExplainAgrees checks that Explain, asked about each frontend of st
// (what Compute made of in), reports that frontend with the same Service
// and exactly its backends as the ones its reasons use.
func checkExplainAgrees(t *testing.T, in Input, st State) {
	t.Helper()
	for _, s := range st.Services {
		ex := Explain(in, Query{Addr: s.Frontend.Addr, Port: s.Frontend.Port, Proto: s.Frontend.Proto}, Facts{})
		if len(ex.Frontends) != 1 {
			t.Errorf("Explain(%s): %d frontends, want 1", s.Frontend, len(ex.Frontends))
			continue
		}
		r := ex.Frontends[0]
		var used []Backend
		for _, e := range r.Endpoints {
			if e.Reason.Used() {
				used = append(used, e.Backend)
			}
		}
		slices.SortFunc(used, Backend.Compare)
		if r.Service.Name != s.Name || r.Service.Kind != s.Kind || !slices.Equal(used, s.Backends) ||
			!slices.Equal(r.Service.Backends, s.Backends) {
			t.Errorf("Explain(%s): %s %s uses %v (backends %v); Compute: %s %s with %v",
				s.Frontend, r.Service.Name, r.Service.Kind, used, r.Service.Backends, s.Name, s.Kind, s.Backends)
		}
	}
}

// reasons renders an explanation's endpoints as "addr:port reason".
func reasons(r FrontendReport) []string {
	var out []string
	for _, e := range r.Endpoints {
		out = append(out, fmt.Sprintf("%s %s", e.Backend, e.Reason))
	}
	return out
}

func TestExplainReasons(t *testing.T) {
	node := NodeInfo{Name: "node-a", Zone: "zone-a", Addresses: addrs("192.0.2.10")}
	// Each case its own object: mod changes the one it is given.
	web := func() *corev1.Service { return svc("web", ips("10.0.0.1"), http80) }
	dual := svc("web", ips("10.0.0.1", "fd00::1"), http80)
	q := Query{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Proto: TCP}
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		facts  Facts
		want   []string
	}{{
		name: "ready, not ready, terminating while others are ready",
		svc:  web(),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080,
			ready("10.1.0.1"), notReady("10.1.0.2"), terminating("10.1.0.3"),
			cond("10.1.0.4", no, no, yes))},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"10.1.0.2:8080 " + ReasonNotReady.String(),
			"10.1.0.3:8080 " + ReasonTerminating.String(),
			"10.1.0.4:8080 " + ReasonTerminatingNotServing.String(),
		},
	}, {
		name: "the serving and terminating fallback",
		svc:  web(),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080,
			notReady("10.1.0.2"), terminating("10.1.0.3"), cond("10.1.0.4", no, no, yes))},
		want: []string{
			"10.1.0.2:8080 " + ReasonNotReady.String(),
			"10.1.0.3:8080 " + ReasonServingTerminating.String(),
			"10.1.0.4:8080 " + ReasonTerminatingNotServing.String(),
		},
	}, {
		name: "internalTrafficPolicy Local: other node",
		svc:  mod(web(), localPolicy),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080,
			on("node-a", ready("10.1.0.1")), on("node-b", ready("10.1.0.2")), on("node-a", notReady("10.1.0.3")))},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"10.1.0.2:8080 " + ReasonOtherNode.String(),
			"10.1.0.3:8080 " + ReasonNotReady.String(),
		},
	}, {
		name: "PreferClose: other zone",
		svc:  mod(web(), preferClose),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080,
			forZones(ready("10.1.0.1"), "zone-a"), forZones(ready("10.1.0.2"), "zone-b"))},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"10.1.0.2:8080 " + ReasonOtherZone.String(),
		},
	}, {
		name: "PreferSameNode: hinted for another node",
		svc:  mod(web(), preferSameNode),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080,
			forNodes(forZones(ready("10.1.0.1"), "zone-a"), "node-a"), forNodes(forZones(ready("10.1.0.2"), "zone-a"), "node-b"))},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"10.1.0.2:8080 " + ReasonOtherNodeHint.String(),
		},
	}, {
		name: "other IP family listed after the frontend's own",
		svc:  dual,
		slices: []*discoveryv1.EndpointSlice{
			v6("web-6", "web", http8080, ready("fd00:1::1")),
			v4("web-4", "web", http8080, ready("10.1.0.1")),
		},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"[fd00:1::1]:8080 " + ReasonOtherFamily.String(),
		},
	}, {
		name:   "ejected",
		svc:    web(),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080, ready("10.1.0.1"), ready("10.1.0.2"), notReady("10.1.0.3"))},
		facts: Facts{Ejected: map[Frontend][]Backend{
			{Addr: q.Addr, Port: 80, Proto: TCP}: {{Addr: netip.MustParseAddr("10.1.0.2"), Port: 8080}},
		}},
		want: []string{
			"10.1.0.1:8080 " + ReasonReady.String(),
			"10.1.0.2:8080 " + ReasonEjected.String(),
			"10.1.0.3:8080 " + ReasonNotReady.String(),
		},
	}, {
		name:   "over capacity",
		svc:    web(),
		slices: []*discoveryv1.EndpointSlice{v4("web-1", "web", http8080, ready("10.1.0.1"), notReady("10.1.0.3"))},
		facts:  Facts{OverCapacity: map[Frontend]bool{{Addr: q.Addr, Port: 80, Proto: TCP}: false}},
		want: []string{
			"10.1.0.1:8080 " + ReasonOverCapacity.String(),
			"10.1.0.3:8080 " + ReasonNotReady.String(),
		},
	}, {
		name: "an empty Service",
		svc:  web(),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Services: []*corev1.Service{tt.svc}, EndpointSlices: tt.slices, Node: node}
			ex := Explain(in, q, tt.facts)
			if len(ex.Frontends) != 1 {
				t.Fatalf("%d frontends, want 1: %+v", len(ex.Frontends), ex)
			}
			r := ex.Frontends[0]
			if got := reasons(r); !slices.Equal(got, tt.want) {
				t.Errorf("got:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(tt.want, "\n\t"))
			}
			var used []Backend
			for _, e := range r.Endpoints {
				if e.Reason.Used() {
					used = append(used, e.Backend)
				}
			}
			if !slices.Equal(r.Service.Backends, used) {
				t.Errorf("Service.Backends %v, the used endpoints %v", r.Service.Backends, used)
			}
			_, over := tt.facts.OverCapacity[r.Service.Frontend]
			if r.OverCapacity != over {
				t.Errorf("OverCapacity %v, want %v", r.OverCapacity, over)
			}
		})
	}
}

func TestExplainAddresses(t *testing.T) {
	node := NodeInfo{Name: "node-a", Addresses: addrs("192.0.2.10")}
	in := Input{
		Node: node,
		Services: []*corev1.Service{
			mod(svc("web", ips("10.0.0.1"), http80, sport("dns", corev1.ProtocolUDP, 53),
				sport("sctp", corev1.ProtocolSCTP, 9)), nodePorts(30080)),
			mod(svc("other", ips("10.0.0.2"), http80), withLabels(labelServiceProxyName, "someone-else")),
			svc("young", ips("10.0.0.1"), http80),
		},
	}
	in.Services[2].Namespace = "other"
	addr := netip.MustParseAddr
	t.Run("unknown address", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("10.9.9.9"), Port: 80, Proto: TCP}, Facts{})
		if len(ex.Frontends)+len(ex.Ports)+len(ex.NotHandled) != 0 || ex.NodeAddress {
			t.Errorf("%+v, want nothing", ex)
		}
	})
	t.Run("known cluster IP, unknown port", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("10.0.0.1"), Port: 81, Proto: TCP}, Facts{})
		want := []PortUse{
			{Name: types.NamespacedName{Namespace: "default", Name: "web"}, Kind: KindClusterIP, Port: 53, Proto: UDP},
			{Name: types.NamespacedName{Namespace: "default", Name: "web"}, Kind: KindClusterIP, Port: 80, Proto: TCP},
			{Name: types.NamespacedName{Namespace: "other", Name: "young"}, Kind: KindClusterIP, Port: 80, Proto: TCP},
		}
		if len(ex.Frontends) != 0 || !slices.Equal(ex.Ports, want) {
			t.Errorf("frontends %v, ports %v; want none and %v", ex.Frontends, ex.Ports, want)
		}
		if !slices.ContainsFunc(ex.Warnings, func(w Warning) bool { return strings.Contains(w.Reason, "SCTP") }) {
			t.Errorf("warnings %v, want the SCTP port's", ex.Warnings)
		}
	})
	t.Run("duplicate: the older Service wins", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("10.0.0.1"), Port: 80}, Facts{})
		if len(ex.Frontends) != 1 || ex.Frontends[0].Service.Name.Name != "web" ||
			!slices.Equal(ex.Frontends[0].Losers, []types.NamespacedName{{Namespace: "other", Name: "young"}}) {
			t.Errorf("%+v, want web winning over other/young", ex.Frontends)
		}
	})
	t.Run("both protocols", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("10.0.0.1"), Port: 53}, Facts{})
		if len(ex.Frontends) != 1 || ex.Frontends[0].Service.Frontend.Proto != UDP {
			t.Errorf("%+v, want the UDP frontend", ex.Frontends)
		}
	})
	t.Run("NodePort at a node address", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("192.0.2.10"), Port: 30080, Proto: TCP}, Facts{})
		if !ex.NodeAddress || len(ex.Frontends) != 1 || ex.Frontends[0].Service.Kind != KindNodePort {
			t.Errorf("%+v, want the NodePort frontend", ex)
		}
		ex = Explain(in, Query{Addr: addr("192.0.2.10"), Port: 30081, Proto: TCP}, Facts{})
		if !ex.NodeAddress || len(ex.Frontends)+len(ex.Ports) != 0 {
			t.Errorf("%+v, want a node address with nothing at the port", ex)
		}
	})
	t.Run("owned by another proxy", func(t *testing.T) {
		ex := Explain(in, Query{Addr: addr("10.0.0.2"), Port: 80, Proto: TCP}, Facts{})
		if len(ex.Frontends) != 0 || len(ex.NotHandled) != 1 || !strings.Contains(ex.NotHandled[0].Reason, "another proxy") {
			t.Errorf("%+v, want other as not handled", ex)
		}
	})
}

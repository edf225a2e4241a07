package lb

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// sortedUnique sorts addrs in place and drops the duplicates.
func sortedUnique(addrs []netip.Addr) []netip.Addr {
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// claim is one Service's claim on a frontend: a candidate Service, with
// what decides between the claims of one frontend beyond the Service.
type claim struct {
	Service
	// created is the claiming object's metadata.creationTimestamp, to the
	// second (the API server records no more); zero when unset.
	created time.Time
}

// appendClaims appends to cands the claims of svc on its frontends fes,
// which frontends returned for it.
func appendClaims(cands []claim, svc *corev1.Service, fes []Service) []claim {
	created := svc.CreationTimestamp.Truncate(time.Second)
	for _, s := range fes {
		cands = append(cands, claim{Service: s, created: created})
	}
	return cands
}

// compareClaim orders by frontend first, then the claims of one frontend
// by precedence, the winner first: the Service created first (see
// compareCreated), then by namespace/name, port name and kind; then by
// everything else, so that the choice among duplicate frontends does not
// depend on input order.
func compareClaim(a, b claim) int {
	if c := a.Frontend.Compare(b.Frontend); c != 0 {
		return c
	}
	if c := compareCreated(a.created, b.created); c != 0 {
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
	if c := cmp.Or(cmp.Compare(a.Policy, b.Policy), cmpBool(a.OutlierDetection, b.OutlierDetection)); c != 0 {
		return c
	}
	return slices.CompareFunc(a.Backends, b.Backends, Backend.Compare)
}

// compareCreated orders creation times, earlier first. An unset (zero)
// time comes after every set one: an object of unknown age cannot be shown
// to be older than anything. The API server always sets it; objects from a
// file usually lack it.
func compareCreated(a, b time.Time) int {
	if az, bz := a.IsZero(), b.IsZero(); az || bz {
		return cmpBool(az, bz)
	}
	return a.Compare(b)
}

// cmpBool orders false before true. The standard library has nothing for
// it: bool is not a cmp.Ordered type.
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
// only come from broken input: a Service listed twice, a file, a new
// Service given the cluster IP of another (which the API server refuses,
// but not across a file or a restored backup), a node address that is also
// a cluster IP or external IP of another service, two services claiming
// one external IP.
//
// The first in compareClaim's order wins, whatever the kinds: the Service
// created first (metadata.creationTimestamp, to the second), so that a new
// Service never takes a frontend that is in use from an older one; a
// Service without a creation time loses to one with it; between equal
// times, or none, the first by namespace/name. Objects from a file usually
// have no creation times, and there namespace/name alone decides. The
// losers are reported, each under its own name and naming the winner; the
// winner gets no warning, as its frontends are all programmed.
//
// One service port reaching a frontend twice (an external IP that is also
// its load balancer IP, say) is not reported: the frontend leads to that
// port either way, and the lower kind wins, so a cluster IP keeps its
// internalTrafficPolicy.
func uniqueFrontends(cands []claim, w *warnings) []Service {
	slices.SortFunc(cands, compareClaim)
	var out []Service
	for len(cands) > 0 {
		n := 1
		for n < len(cands) && cands[n].Frontend.Compare(cands[0].Frontend) == 0 {
			n++
		}
		out = append(out, cands[0].Service)
		reportDuplicates(cands[:n], w)
		cands = cands[n:]
	}
	return out
}

// reportDuplicates warns about every claim of group but the first, which
// keeps the frontend. group is the sorted claims of one frontend.
func reportDuplicates(group []claim, w *warnings) {
	kept := group[0]
	for _, c := range group[1:] {
		if kept.Name == c.Name && kept.PortName == c.PortName {
			continue
		}
		what, why := "frontend", precedence(kept, c)
		if kept.Kind != KindClusterIP || c.Kind != KindClusterIP {
			what, why = c.Kind.String()+" frontend", kept.Kind.String()+"; "+why
		}
		result := "this Service's frontend is not programmed"
		if kept.Name == c.Name {
			result = "this port's frontend is not programmed"
		}
		w.add(c.Name, "port %q: %s %s is also claimed by %s port %q (%s); %s",
			c.PortName, what, c.Frontend, kept.Name, kept.PortName, why, result)
	}
}

// precedence says why kept, first in compareClaim's order, comes before
// lost, a claim of the same frontend.
func precedence(kept, lost claim) string {
	switch {
	case !kept.created.IsZero() && lost.created.IsZero():
		return "this Service has no creation time"
	case kept.created.Before(lost.created):
		return "created earlier"
	case kept.Name == lost.Name:
		return "same Service, first by port name"
	case kept.created.IsZero():
		return "neither has a creation time, first by namespace/name"
	}
	return "created in the same second, first by namespace/name"
}

package reconciler

import (
	"cmp"
	stdmaps "maps"
	"net/netip"
	"slices"

	"github.com/socklb/socklb/pkg/maps"
)

// usage counts map entries the way the kernel does: an insert into a full
// map fails, a replacement of an existing key needs no room.
type usage struct {
	entries   int // service map: per frontend its entry and one slot per backend
	members   int // member map: one per backend of each frontend
	backends  int // backend map
	frontends int // counter and name maps: one per frontend
}

// fits reports whether u stays within limit in every map.
func (u usage) fits(limit usage) bool {
	return u.entries <= limit.entries && u.members <= limit.members &&
		u.backends <= limit.backends && u.frontends <= limit.frontends
}

// stepKind is one kind of map write.
type stepKind uint8

const (
	stepDeleteFrontend stepKind = iota
	stepAddBackend
	stepPublish
	stepDeleteBackend
	// The cluster IP map's: placeVIPs puts them between the others.
	stepAddVIP
	stepDeleteVIP
)

// step is one write of a plan, executed in order.
type step struct {
	kind    stepKind
	fe      maps.Frontend  // stepDeleteFrontend
	svc     desiredService // stepPublish
	backend maps.Backend   // stepAddBackend
	id      maps.BackendID // stepDeleteBackend
	vip     netip.Addr     // stepAddVIP, stepDeleteVIP
}

// OverCapacity is a frontend the maps have no room for. A frontend that
// was served before keeps its older version in the maps.
type OverCapacity struct {
	Service  string // namespace/name
	Name     string // namespace/name:port
	Frontend maps.Frontend
	Backends int
	// Stale is true when an older version of the frontend stays served.
	Stale bool
}

// planInput is what a plan is made from: the maps' content as the
// reconciler's bookkeeping knows it, and the change to make.
type planInput struct {
	services map[maps.Frontend]written
	backends map[maps.Backend]maps.BackendID
	ids      map[maps.BackendID]maps.Backend
	refs     map[maps.BackendID]int
	unused   map[maps.BackendID]bool
	// served counts, per Service (namespace/name), its frontends in the
	// maps; a Service with any is served, and keeps priority for room.
	served map[string]int
	// want are the new and changed frontends, gone the frontends to remove.
	want []desiredService
	gone []maps.Frontend
	used usage
	// vips are the addresses in the cluster IP map, vipRefs the number of
	// published ClusterIP frontends of each address, vipCheck the
	// addresses whose entry placeVIPs checks whatever the steps.
	vips     map[netip.Addr]bool
	vipRefs  map[netip.Addr]int
	vipCheck map[netip.Addr]bool
	// limit is each map's size.
	limit usage
	// reserve is kept free in the service and member maps beyond what the
	// frontends use, so that any served frontend can be republished
	// (double-buffered) whatever the rest of the map holds.
	reserve int
}

type plan struct {
	steps   []step
	over    []OverCapacity
	reserve int // the reserve after the plan
	// blocked are the addresses of ClusterIP frontends in over that are
	// not served: not in the cluster IP map, so that their ports are not
	// refused; the next plan checks them again.
	blocked map[netip.Addr]bool
}

// makePlan orders the writes of one sync so that progress is always
// possible, also with no free entry: removals first, then changes of
// served frontends (a shrink always fits in the reserve), then new
// frontends of served Services, then new Services, each admitted only if
// it fits with the reserve kept. What does not fit is listed in over, in a
// deterministic order: Services by name, frontends by address. The cluster
// IP map's writes go in between (placeVIPs). It is a pure function of its
// input.
func makePlan(in planInput) plan {
	p := plan{reserve: in.reserve, blocked: map[netip.Addr]bool{}}
	used := in.used
	// delta is the change of each backend's reference count by the plan.
	delta := map[maps.BackendID]int{}
	refs := func(id maps.BackendID) int { return in.refs[id] + delta[id] }
	deleted := map[maps.BackendID]bool{}
	gcCandidates := func(yield func(maps.BackendID) bool) {
		for _, id := range slices.Sorted(stdmaps.Keys(delta)) {
			if !yield(id) {
				return
			}
		}
		for _, id := range slices.Sorted(stdmaps.Keys(in.unused)) {
			if !yield(id) {
				return
			}
		}
	}

	// 1. Removals free room before anything needs it.
	for _, fe := range in.gone {
		old, ok := in.services[fe]
		if !ok {
			continue // never programmed
		}
		p.steps = append(p.steps, step{kind: stepDeleteFrontend, fe: fe})
		used.entries -= 1 + len(old.backends)
		used.members -= len(old.backends)
		used.frontends--
		for _, id := range old.backends {
			delta[id]--
		}
		for _, id := range old.held {
			delta[id]--
		}
	}

	// 2. Backends no frontend will list any more go before new ones come.
	wanted := map[maps.Backend]bool{}
	for _, d := range in.want {
		for _, b := range d.backends {
			wanted[b] = true
		}
		// Members held out for ejection keep their backend entry.
		for _, b := range d.ejected {
			wanted[b] = true
		}
	}
	gc := func(keepWanted bool) {
		for id := range gcCandidates {
			b, known := in.ids[id]
			if !known || deleted[id] || refs(id) > 0 || keepWanted && wanted[b] {
				continue
			}
			deleted[id] = true
			used.backends--
			p.steps = append(p.steps, step{kind: stepDeleteBackend, id: id})
		}
	}
	gc(true)

	// 3. Admit changes in priority order.
	added := map[maps.Backend]bool{}
	// newBackends lists the backends of d that the backend map lacks and
	// that no earlier step (or frontend of tentative) adds.
	newBackends := func(d *desiredService, tentative map[maps.Backend]bool) []maps.Backend {
		var out []maps.Backend
		for _, b := range d.backends {
			if id, ok := in.backends[b]; ok && !deleted[id] || added[b] || tentative[b] {
				continue
			}
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
		return out
	}
	// admit checks whether d fits next to u with reserve r, and returns
	// the usage and reserve after it.
	admit := func(d *desiredService, u usage, r int, tentative map[maps.Backend]bool) (usage, int, bool) {
		k := len(d.backends)
		old, served := in.services[d.fe]
		o := len(old.backends)
		// While it is published the old and the new set both exist.
		peak := u
		peak.entries += k
		peak.members += k
		peak.backends += len(newBackends(d, tentative))
		if !served {
			peak.entries++
			peak.frontends++
		}
		after := peak
		after.entries -= o
		after.members -= o
		r2 := max(r, k)
		if !peak.fits(in.limit) {
			return u, r, false
		}
		if !served || k > o {
			// Growth must leave the reserve for the next republish.
			withReserve := after
			withReserve.entries += r2
			withReserve.members += r2
			if !withReserve.fits(in.limit) {
				return u, r, false
			}
		}
		return after, r2, true
	}
	emit := func(d *desiredService) {
		for _, b := range newBackends(d, nil) {
			added[b] = true
			p.steps = append(p.steps, step{kind: stepAddBackend, backend: b})
		}
		for _, b := range append(slices.Clone(d.backends), d.ejected...) {
			if id, ok := in.backends[b]; ok && !deleted[id] {
				delta[id]++
			}
		}
		if old, ok := in.services[d.fe]; ok {
			for _, id := range old.backends {
				delta[id]--
			}
			for _, id := range old.held {
				delta[id]--
			}
		}
		p.steps = append(p.steps, step{kind: stepPublish, svc: *d})
	}
	reject := func(d *desiredService) {
		_, stale := in.services[d.fe]
		p.over = append(p.over, OverCapacity{
			Service: d.service, Name: d.name, Frontend: d.fe, Backends: len(d.backends), Stale: stale,
		})
		if !stale && isClusterIP(d.flags) {
			// A port of the Service that is not served must not be
			// refused as one it does not have: it is left alone,
			// and so are the address's others.
			p.blocked[d.fe.Addr] = true
		}
	}

	var fresh []int
	for i := range in.want {
		d := &in.want[i]
		old, served := in.services[d.fe]
		if !served {
			fresh = append(fresh, i)
			continue
		}
		if unchanged(old, d, in.backends) {
			continue
		}
		u, r, ok := admit(d, used, p.reserve, nil)
		if !ok {
			reject(d)
			continue
		}
		used, p.reserve = u, r
		emit(d)
	}
	// New frontends: those of served Services first, then by Service
	// name; a Service's new frontends are admitted together or not at all.
	rank := func(d *desiredService) int {
		if in.served[d.service] > 0 {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(fresh, func(a, b int) int {
		da, db := &in.want[a], &in.want[b]
		return cmp.Or(cmp.Compare(rank(da), rank(db)), cmp.Compare(da.service, db.service))
	})
	for start := 0; start < len(fresh); {
		end := start + 1
		for end < len(fresh) && in.want[fresh[end]].service == in.want[fresh[start]].service {
			end++
		}
		group := fresh[start:end]
		start = end
		u, r, ok := used, p.reserve, true
		tentative := map[maps.Backend]bool{} // shared backends count once
		for _, i := range group {
			d := &in.want[i]
			nb := newBackends(d, tentative)
			if u, r, ok = admit(d, u, r, tentative); !ok {
				break
			}
			for _, b := range nb {
				tentative[b] = true
			}
		}
		if !ok {
			for _, i := range group {
				reject(&in.want[i])
			}
			continue
		}
		used, p.reserve = u, r
		for _, i := range group {
			emit(&in.want[i])
		}
	}

	// 4. Backends that no frontend lists after the plan.
	gc(false)
	p.steps = placeVIPs(in, p.steps, p.blocked)
	slices.SortFunc(p.over, func(a, b OverCapacity) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), compareFrontends(a.Frontend, b.Frontend))
	})
	return p
}

// unchanged reports whether the frontend in the maps already is d.
func unchanged(w written, d *desiredService, backends map[maps.Backend]maps.BackendID) bool {
	if w.damaged || w.name != d.name || w.flags != d.flags || w.affinity != d.affinity || len(w.backends) != len(d.backends) {
		return false
	}
	for i, b := range d.backends {
		if id, ok := backends[b]; !ok || id != w.backends[i] {
			return false
		}
	}
	// The members held out for ejection are bookkeeping only, but a
	// change of them is written too (publish keeps them referenced).
	var held []maps.BackendID
	for _, b := range d.ejected {
		if id, ok := backends[b]; ok {
			held = append(held, id)
		}
	}
	return slices.Equal(held, w.held)
}

package reconciler

import (
	"net/netip"
	"slices"

	"github.com/socklb/socklb/pkg/maps"
)

// isClusterIP reports whether a frontend with these flags is a ClusterIP
// one: the flags mark the other kinds (flagsOf), and the maps keep them,
// so a restored frontend is known too.
func isClusterIP(flags uint16) bool {
	return flags&(maps.FlagNodePort|maps.FlagExternal) == 0
}

// placeVIPs returns steps with the writes of the cluster IP map put in
// between, so that at every step an address is in the map only while it
// has a published ClusterIP frontend and none of its ClusterIP frontends
// is left out for room (blocked):
//
//   - an address is added after the last step of the plan that publishes
//     a ClusterIP frontend at it, so after its first one, and so that the
//     ports this plan publishes are not refused while it writes them;
//   - it is deleted before the step that deletes (or turns into another
//     kind) its last ClusterIP frontend, and when the plan leaves it with
//     none, before the first such step, so that the ports being removed
//     are not refused on their way out;
//   - a blocked address is deleted first, and not added;
//   - the addresses of in.vipCheck (all of them after a restore, the
//     blocked ones of the last sync otherwise) are checked once more at
//     the start (delete) and at the end (add).
//
// So a connect to an address that is not a published Service's is never
// refused, and one to a published frontend never is either: its own entry
// is found first. The map cannot fill up: each address in it has a
// published frontend, and the frontends fit in limit.frontends, which the
// cluster IP map's size bounds (New). It is a pure function of its input.
func placeVIPs(in planInput, steps []step, blocked map[netip.Addr]bool) []step {
	delta := map[netip.Addr]int{}         // change of in.vipRefs by the steps so far
	present := map[netip.Addr]bool{}      // the map's content, where the steps changed it
	clusterIP := map[maps.Frontend]bool{} // the kind of a frontend a step wrote
	refs := func(a netip.Addr) int { return in.vipRefs[a] + delta[a] }
	isIn := func(a netip.Addr) bool {
		if v, ok := present[a]; ok {
			return v
		}
		return in.vips[a]
	}
	want := func(a netip.Addr) bool { return refs(a) > 0 && !blocked[a] }
	wasClusterIP := func(fe maps.Frontend) bool {
		if v, ok := clusterIP[fe]; ok {
			return v
		}
		w, ok := in.services[fe]
		return ok && isClusterIP(w.flags)
	}
	// change is what step s does to the ClusterIP frontends of its
	// address: -1 one leaves, +1 one comes, 0 neither.
	change := func(s step) (netip.Addr, int) {
		switch s.kind {
		case stepDeleteFrontend:
			if wasClusterIP(s.fe) {
				return s.fe.Addr, -1
			}
		case stepPublish:
			switch was, is := wasClusterIP(s.svc.fe), isClusterIP(s.svc.flags); {
			case was && !is:
				return s.svc.fe.Addr, -1
			case is && !was:
				return s.svc.fe.Addr, 1
			}
		}
		return netip.Addr{}, 0
	}
	apply := func(s step) {
		switch s.kind {
		case stepDeleteFrontend:
			clusterIP[s.fe] = false
		case stepPublish:
			clusterIP[s.svc.fe] = isClusterIP(s.svc.flags)
		}
	}

	// A dry run finds where the plan leaves each address and the last
	// step that publishes a ClusterIP frontend at it.
	final := map[netip.Addr]int{}
	lastPublish := map[netip.Addr]int{}
	for i, s := range steps {
		if a, d := change(s); d != 0 {
			final[a] += d
		}
		if s.kind == stepPublish && isClusterIP(s.svc.flags) {
			lastPublish[s.svc.fe.Addr] = i
		}
		apply(s)
	}
	clear(clusterIP)

	out := make([]step, 0, len(steps))
	set := func(a netip.Addr, in bool) {
		present[a] = in
		k := stepDeleteVIP
		if in {
			k = stepAddVIP
		}
		out = append(out, step{kind: k, vip: a})
	}
	// checked returns, sorted, the addresses of in.vipCheck (and of
	// blocked, withBlocked) that need a write. Only those are sorted:
	// there are as many blocked addresses as frontends left out for room,
	// in every sync.
	checked := func(withBlocked bool, needs func(netip.Addr) bool) []netip.Addr {
		var out []netip.Addr
		for a := range in.vipCheck {
			if needs(a) {
				out = append(out, a)
			}
		}
		if withBlocked {
			for a := range blocked {
				if !in.vipCheck[a] && needs(a) {
					out = append(out, a)
				}
			}
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	for _, a := range checked(true, func(a netip.Addr) bool { return isIn(a) && !want(a) }) {
		set(a, false)
	}
	for i, s := range steps {
		a, d := change(s)
		if d < 0 && isIn(a) && (refs(a) == 1 || in.vipRefs[a]+final[a] == 0) {
			set(a, false)
		}
		out = append(out, s)
		apply(s)
		if d != 0 {
			delta[a] += d
		}
		if s.kind == stepPublish && isClusterIP(s.svc.flags) {
			a := s.svc.fe.Addr
			if i == lastPublish[a] && want(a) && !isIn(a) {
				set(a, true)
			}
		}
	}
	// A blocked address is never wanted.
	for _, a := range checked(false, func(a netip.Addr) bool { return want(a) && !isIn(a) }) {
		set(a, true)
	}
	return out
}

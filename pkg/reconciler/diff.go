package reconciler

import (
	"slices"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// ApplyChanged is Apply for a caller that knows which frontends may have
// changed since its previous Apply (lb.Computer's Changed): with all
// false, desired must be lb.Computer's output, sorted by frontend, and
// equal to the previous desired state but at the frontends of changed.
// It then looks at those alone instead of at every frontend, while the
// last Apply left nothing to catch up on (no reread due, no frontend
// without room); else, and with all, it is Apply.
func (r *Reconciler) ApplyChanged(desired lb.State, changed []lb.Frontend, all bool) (Stats, error) {
	if all || !r.restored || r.verify || !r.complete || r.overs > 0 {
		return r.Apply(desired)
	}
	next, idx, skipped, ok := r.diffChanged(desired.Services, changed)
	if !ok {
		return r.Apply(desired) // a frontend came or went
	}
	st, err := r.applyDiff(next, idx, nil, skipped, true)
	if err != nil {
		r.restored = false
	}
	return st, err
}

// diffChanged is diff for a list that differs from the last applied one
// at most at the frontends of changed: it replaces the entries of applied
// that changed in place and returns their indexes. It returns false, having
// changed nothing, when a frontend of changed is in one list and not in
// the other, which the full diff handles.
func (r *Reconciler) diffChanged(list []lb.Service, changed []lb.Frontend) (next []appliedService, idx []int, skipped int, ok bool) {
	type pair struct{ i, j int }
	var pairs []pair
	for _, fe := range changed {
		mfe := frontendOf(fe)
		i, inList := slices.BinarySearchFunc(list, mfe, func(s lb.Service, fe maps.Frontend) int {
			return compareFrontends(frontendOf(s.Frontend), fe)
		})
		j, inApplied := slices.BinarySearchFunc(r.applied, mfe, func(a appliedService, fe maps.Frontend) int {
			return compareFrontends(frontendOf(a.svc.Frontend), fe)
		})
		if inList != inApplied {
			return nil, nil, 0, false
		}
		if inList {
			pairs = append(pairs, pair{i, j})
		}
	}
	skipped = r.skipped
	for _, p := range pairs {
		a := &r.applied[p.j]
		if sameService(&a.svc, &list[p.i]) {
			continue
		}
		if a.rejected {
			skipped--
		}
		*a = appliedService{svc: list[p.i]}
		idx = append(idx, p.j)
	}
	return r.applied, idx, skipped, true
}

// diff walks list and the last applied list side by side. Unchanged
// entries are copied in runs; new and changed ones (and those that had no
// room) are returned as indexes into next; frontends of applied entries
// passed over are gone.
func (r *Reconciler) diff(list []lb.Service) (next []appliedService, changed []int, gone []maps.Frontend, skipped int) {
	var old []appliedService
	if r.complete {
		old = r.applied
	}
	next = r.spare[:0]
	j, run := 0, 0 // old[run:j] are unchanged and not yet copied
	for i := range list {
		s := &list[i]
		fe := frontendOf(s.Frontend)
		c := -1
		for j < len(old) {
			if c = compareFrontends(frontendOf(old[j].svc.Frontend), fe); c >= 0 {
				break
			}
			next = append(next, old[run:j]...)
			gone = append(gone, frontendOf(old[j].svc.Frontend))
			j++
			run = j
		}
		if c == 0 && !old[j].over && sameService(&old[j].svc, s) {
			if old[j].rejected {
				skipped++
			}
			j++
			continue
		}
		next = append(next, old[run:j]...)
		if c == 0 {
			j++ // replaced
		}
		run = j
		changed = append(changed, len(next))
		next = append(next, appliedService{svc: *s})
	}
	next = append(next, old[run:j]...)
	for _, a := range old[j:] {
		gone = append(gone, frontendOf(a.svc.Frontend))
	}
	return next, changed, gone, skipped
}

// sameService reports whether a and b are equal in every field. It
// compares field by field because Backends makes lb.Service incomparable;
// TestSameServiceSeesEveryField keeps it in step with lb.Service.
func sameService(a, b *lb.Service) bool {
	return a.Frontend == b.Frontend && a.Kind == b.Kind && a.Name == b.Name && a.PortName == b.PortName &&
		a.TrafficLocal == b.TrafficLocal && a.ExternalLocal == b.ExternalLocal &&
		a.AffinityTimeout == b.AffinityTimeout && a.Policy == b.Policy && a.OutlierDetection == b.OutlierDetection &&
		sameBackends(a.Backends, b.Backends) && slices.Equal(a.Ejected, b.Ejected)
}

// sameBackends is slices.Equal with a shortcut for the common case: the
// model hands out the same backend list for a frontend that did not change,
// and Apply keeps the lists it was given (see Apply), so the contents need
// no look.
func sameBackends(a, b []lb.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// byFrontend returns list sorted by dataplane frontend, one Service per
// frontend. The model's output already is, and is returned as it is.
// Anything else is sorted, and of a frontend listed twice (which only broken
// input can do) the last listing wins, as if each were written in turn.
func byFrontend(list []lb.Service) []lb.Service {
	sorted := true
	for i := 1; i < len(list) && sorted; i++ {
		sorted = compareFrontends(frontendOf(list[i-1].Frontend), frontendOf(list[i].Frontend)) < 0
	}
	if sorted {
		return list
	}
	out := slices.Clone(list)
	slices.SortStableFunc(out, func(a, b lb.Service) int {
		return compareFrontends(frontendOf(a.Frontend), frontendOf(b.Frontend))
	})
	n := 0
	for i := range out {
		if i+1 < len(out) && frontendOf(out[i].Frontend) == frontendOf(out[i+1].Frontend) {
			continue // a later listing follows
		}
		out[n] = out[i]
		n++
	}
	return out[:n]
}

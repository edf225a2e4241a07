package lb

import (
	"net/netip"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// Computer is Compute with a memory: it returns what Compute returns for
// the same Input, but redoes only the Services whose objects changed since
// its previous call. One endpoint change among 10 000 Services then costs a
// pass of pointer lookups over the input instead of a parse of every
// endpoint.
//
// It relies on the contract of the sources (informer caches, the file
// source): an object in an Input is never modified, and a change arrives as
// a new object. A Service's frontends are recomputed when the Service, or
// the set of EndpointSlices labelled for it, is not the same pointers as at
// the previous call; everything is recomputed when the node or the selector
// differs.
//
// The State it returns is valid until the next call: the Computer edits
// its Services list in place. What the list holds, backend lists included,
// is never modified, so a copied lb.Service stays valid. Callers must not
// modify the State or the Warnings. A Computer is not safe for concurrent
// use.
type Computer struct {
	primed    bool
	node      NodeInfo // Name and Zone: what frontends reads of it
	nodeAddrs []netip.Addr
	selector  labels.Selector
	defaults  Defaults

	// gen numbers the calls; a record seen in this call has seen == gen.
	gen      uint64
	services objects[corev1.Service]
	slices   objects[discoveryv1.EndpointSlice]
	entries  map[types.NamespacedName]*entry
	dirty    []*entry // entries whose objects changed in this call

	// claims holds every claim on each frontend, from all entries; after
	// a call each group is sorted (compareClaim) and its first one won.
	claims map[Frontend][]claim
	// touched are the frontends whose claims changed in this call.
	touched []Frontend
	// duplicates are the warnings of contested frontends.
	duplicates map[Frontend]warnings
	// warned are the entries with warnings of their own.
	warned map[*entry]bool
	// warningsStale is set when some warning came or went.
	warningsStale bool

	// out holds the winners, sorted by frontend. It is edited in place
	// and rebuilt into spare when frontends come or go: copying 100 000
	// Services each call would cost more than the rest of the call.
	out, spare []Service
	edits      []edit
	warnings   []Warning // sorted
}

// entry is what the Computer knows of one Service key (namespace/name).
type entry struct {
	key types.NamespacedName
	// svcs are the input's Services under key that the selector matches:
	// one, except in broken input that lists two objects for one name.
	svcs []*corev1.Service
	// slices are the EndpointSlices labelled for key, in no order:
	// frontends does not depend on their order.
	slices []*discoveryv1.EndpointSlice
	// cands and warns are frontends' result for svcs and slices, as
	// claims.
	cands []claim
	warns warnings
	dirty bool
}

// NewComputer returns a Computer with nothing computed yet.
func NewComputer() *Computer {
	return &Computer{}
}

// Reset forgets everything, so that the next call recomputes all of it.
// Nothing requires it; the Syncer calls it after a failed sync, so that the
// retry is a full resync through all layers.
func (c *Computer) Reset() {
	*c = Computer{}
}

// Compute returns Compute(in); see Computer for what it remembers.
func (c *Computer) Compute(in Input) (State, []Warning) {
	nodeAddrs := nodePortAddrs(in.Node.Addresses)
	node := NodeInfo{Name: in.Node.Name, Zone: in.Node.Zone}
	// Every Service reads the node, and the selector decides which
	// Services count; a change of either is rare enough to redo all.
	// DeepEqual because a Selector need not be comparable with ==.
	if !c.primed || node.Name != c.node.Name || node.Zone != c.node.Zone ||
		!slices.Equal(nodeAddrs, c.nodeAddrs) || !reflect.DeepEqual(in.ServiceSelector, c.selector) ||
		in.Defaults != c.defaults {
		c.reset(node, nodeAddrs, in.ServiceSelector)
		c.defaults = in.Defaults
	}
	c.gen++
	c.scanServices(in.Services)
	c.scanSlices(in.EndpointSlices)
	for _, e := range c.dirty {
		c.recompute(e)
	}
	c.dirty = shrink(c.dirty)
	c.resolve()
	if c.warningsStale {
		c.collectWarnings()
	}
	if len(c.out) == 0 {
		return State{}, c.warnings // as Compute returns it
	}
	return State{Services: c.out}, c.warnings
}

func (c *Computer) reset(node NodeInfo, nodeAddrs []netip.Addr, sel labels.Selector) {
	*c = Computer{
		primed:     true,
		node:       node,
		nodeAddrs:  nodeAddrs,
		selector:   sel,
		services:   newObjects[corev1.Service](),
		slices:     newObjects[discoveryv1.EndpointSlice](),
		entries:    make(map[types.NamespacedName]*entry),
		claims:     make(map[Frontend][]claim),
		duplicates: make(map[Frontend]warnings),
		warned:     make(map[*entry]bool),
	}
}

func (c *Computer) entry(key types.NamespacedName) *entry {
	e := c.entries[key]
	if e == nil {
		e = &entry{key: key}
		c.entries[key] = e
	}
	return e
}

func (c *Computer) markDirty(e *entry) {
	if !e.dirty {
		e.dirty = true
		c.dirty = append(c.dirty, e)
	}
}

// objects tracks the input objects of one kind between calls.
type objects[T any] struct {
	records map[*T]*record
	// byName is the newest object of each name (namespace/name of the
	// object itself): an update replaces the object of its name, so the
	// object it replaced is found without a look at every record.
	byName map[types.NamespacedName]*T
}

type record struct {
	e    *entry // the entry it counts for; nil for none
	seen uint64 // the last call that listed it
}

func newObjects[T any]() objects[T] {
	return objects[T]{records: make(map[*T]*record), byName: make(map[types.NamespacedName]*T)}
}

// scan records which objects of list are new, passing them to add, and
// which are gone, passing them to remove. name returns an object's own
// namespace/name. An object listed twice counts once: Compute's result is
// the same either way.
func (o *objects[T]) scan(list []*T, gen uint64, name func(*T) types.NamespacedName,
	add func(*T) *entry, remove func(*T, *entry)) {
	before, seenBefore := len(o.records), 0
	var replaced []*T
	for _, p := range list {
		if p == nil {
			continue
		}
		r := o.records[p]
		switch {
		case r == nil:
			n := name(p)
			if old := o.byName[n]; old != nil {
				replaced = append(replaced, old)
			}
			o.byName[n] = p
			o.records[p] = &record{e: add(p), seen: gen}
		case r.seen != gen:
			r.seen = gen
			seenBefore++
		}
	}
	if seenBefore == before {
		return // nothing gone
	}
	drop := func(p *T, r *record) {
		delete(o.records, p)
		if n := name(p); o.byName[n] == p {
			delete(o.byName, n)
		}
		remove(p, r.e)
	}
	// Usually every object gone was replaced by a new one of its name.
	gone := 0
	for _, p := range replaced {
		if r := o.records[p]; r != nil && r.seen != gen {
			drop(p, r)
			gone++
		}
	}
	if gone == before-seenBefore {
		return
	}
	// Some were deleted outright: look at every record.
	for p, r := range o.records {
		if r.seen != gen {
			drop(p, r)
		}
	}
}

// scanServices finds the new and gone Services; those the selector
// matches count for the entry of their name.
func (c *Computer) scanServices(list []*corev1.Service) {
	c.services.scan(list, c.gen,
		func(s *corev1.Service) types.NamespacedName {
			return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		},
		func(s *corev1.Service) *entry {
			if c.selector != nil && !c.selector.Matches(labels.Set(s.Labels)) {
				return nil
			}
			e := c.entry(types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
			e.svcs = append(e.svcs, s)
			c.markDirty(e)
			return e
		},
		func(s *corev1.Service, e *entry) {
			if e != nil {
				e.svcs = removeOne(e.svcs, s)
				c.markDirty(e)
			}
		})
}

// scanSlices finds the new and gone EndpointSlices; each counts for the
// entry of the Service its label names.
func (c *Computer) scanSlices(list []*discoveryv1.EndpointSlice) {
	c.slices.scan(list, c.gen,
		func(s *discoveryv1.EndpointSlice) types.NamespacedName {
			return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		},
		func(s *discoveryv1.EndpointSlice) *entry {
			// As groupSlices: a slice without the label belongs to no Service.
			name := s.Labels[discoveryv1.LabelServiceName]
			if name == "" {
				return nil
			}
			e := c.entry(types.NamespacedName{Namespace: s.Namespace, Name: name})
			e.slices = append(e.slices, s)
			c.markDirty(e)
			return e
		},
		func(s *discoveryv1.EndpointSlice, e *entry) {
			if e != nil {
				e.slices = removeOne(e.slices, s)
				c.markDirty(e)
			}
		})
}

// removeOne removes p from list, which holds it once.
func removeOne[T any](list []*T, p *T) []*T {
	if i := slices.Index(list, p); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	return list
}

// recompute redoes the frontends of e and replaces its claims.
func (c *Computer) recompute(e *entry) {
	e.dirty = false
	var cands []claim
	var w warnings
	for _, svc := range e.svcs {
		cands = appendClaims(cands, svc, frontends(svc, e.slices, c.node, c.nodeAddrs, c.defaults, &w))
	}
	for _, s := range e.cands {
		c.retract(s.Frontend, e.key)
	}
	for _, s := range cands {
		c.claims[s.Frontend] = append(c.claims[s.Frontend], s)
		c.touched = append(c.touched, s.Frontend)
	}
	if len(e.warns) > 0 || len(w) > 0 {
		c.warningsStale = true
	}
	e.cands, e.warns = cands, w
	if len(w) > 0 {
		c.warned[e] = true
	} else {
		delete(c.warned, e)
	}
	if len(e.svcs) == 0 && len(e.slices) == 0 {
		delete(c.entries, e.key) // no record refers to it any more
	}
}

// retract removes the claims of the Service key on fe. A group left
// empty stays until resolve, which deletes it.
func (c *Computer) retract(fe Frontend, key types.NamespacedName) {
	c.claims[fe] = slices.DeleteFunc(c.claims[fe], func(s claim) bool { return s.Name == key })
	c.touched = append(c.touched, fe)
}

// resolve picks the winner of every touched frontend, as uniqueFrontends
// does, and brings the sorted output up to date: a new winner replaces the
// old one in place; frontends that appear or disappear are merged in a
// pass into the spare buffer, which then becomes the output.
func (c *Computer) resolve() {
	if len(c.touched) == 0 {
		return
	}
	slices.SortFunc(c.touched, Frontend.Compare)
	c.touched = slices.CompactFunc(c.touched, func(a, b Frontend) bool { return a.Compare(b) == 0 })

	edits := c.edits[:0] // frontends to add (with their winner) or remove
	for _, fe := range c.touched {
		g := c.claims[fe]
		if len(c.duplicates[fe]) > 0 {
			c.warningsStale = true
			delete(c.duplicates, fe)
		}
		i, found := slices.BinarySearchFunc(c.out, fe, func(s Service, fe Frontend) int { return s.Frontend.Compare(fe) })
		if len(g) == 0 {
			delete(c.claims, fe)
			if found {
				edits = append(edits, edit{fe: fe})
			}
			continue
		}
		slices.SortFunc(g, compareClaim)
		if found {
			c.out[i] = g[0].Service
		} else {
			edits = append(edits, edit{fe: fe, add: true, s: g[0].Service})
		}
		if len(g) > 1 {
			var w warnings
			reportDuplicates(g, &w)
			if len(w) > 0 {
				c.duplicates[fe] = w
				c.warningsStale = true
			}
		}
	}
	c.touched = shrink(c.touched)
	if len(edits) > 0 {
		out, old := c.spare[:0], c.out
		for _, e := range edits {
			i, _ := slices.BinarySearchFunc(old, e.fe, func(s Service, fe Frontend) int { return s.Frontend.Compare(fe) })
			out = append(out, old[:i]...)
			old = old[i:]
			if e.add {
				out = append(out, e.s)
			} else {
				old = old[1:]
			}
		}
		out = append(out, old...)
		clear(out[len(out):cap(out)]) // what the buffer held before: let it go
		c.out, c.spare = out, c.out
	}
	c.edits = shrink(edits)
}

// edit adds or removes a frontend of the output.
type edit struct {
	fe  Frontend
	add bool
	s   Service // the winner, when add
}

// shrink empties a scratch list, and drops it when a full recompute has
// grown it large, so that its memory is not held for the syncs of a few
// changes that follow.
func shrink[T any](list []T) []T {
	if cap(list) > 1024 {
		return nil
	}
	clear(list) // drop references to entries that may be gone
	return list[:0]
}

// collectWarnings rebuilds the sorted warnings from the entries' and the
// contested frontends'.
func (c *Computer) collectWarnings() {
	var all warnings
	for e := range c.warned {
		all = append(all, e.warns...)
	}
	for _, w := range c.duplicates {
		all = append(all, w...)
	}
	c.warnings = all.sorted()
	c.warningsStale = false
}

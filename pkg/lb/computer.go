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
// A source that tracks what changed (the Kubernetes source) uses
// ComputeChanged instead, which is handed the changed Services' keys and
// looks at nothing else; Changed then tells the reconciler which
// frontends to look at.
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
	// touched are the frontends whose claims changed in this call;
	// changed is the list Changed returns, changedAll its all.
	touched    []Frontend
	changed    []Frontend
	changedAll bool
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
	if !c.sameSettings(node, nodeAddrs, in) {
		c.reset(node, nodeAddrs, in.ServiceSelector)
		c.defaults = in.Defaults
	}
	c.gen++
	c.scanServices(in.Services)
	c.scanSlices(in.EndpointSlices)
	return c.finish()
}

// ObjectsOf returns the objects now in the cache for one Service key: the
// Service of that namespace/name (at most one, as in an informer's cache)
// and the EndpointSlices labelled for it.
type ObjectsOf func(key types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice)

// ComputeChanged is Compute for a source that tracks its changes: in
// carries the node, the selector and the defaults but no objects, keys are
// the Services whose Service or EndpointSlices changed since the previous
// call (those that a slice left as well as those it joined), and objects
// returns the current ones of a key. It returns what Compute would return
// for the source's whole content, at a cost that depends on the keys, not
// on the number of Services. It returns false, having done nothing, when
// it cannot: before a first Compute, or when the node, the selector or the
// defaults changed; the caller then calls Compute with every object.
func (c *Computer) ComputeChanged(in Input, keys []types.NamespacedName, objects ObjectsOf) (State, []Warning, bool) {
	nodeAddrs := nodePortAddrs(in.Node.Addresses)
	node := NodeInfo{Name: in.Node.Name, Zone: in.Node.Zone}
	if !c.sameSettings(node, nodeAddrs, in) {
		return State{}, nil, false
	}
	c.gen++
	for _, key := range keys {
		svcs, slices := objects(key)
		c.updateServices(key, svcs)
		c.updateSlices(key, slices)
	}
	st, w := c.finish()
	return st, w, true
}

// Changed returns the frontends whose Service in the State of the last
// call may differ from the previous call's (added, removed or changed);
// the Services of all others are the same values. all is true when there
// is no previous call to compare with (the first call, after Reset or a
// change of the node) or when too many changed to be worth listing.
// The list is valid until the next call.
func (c *Computer) Changed() (frontends []Frontend, all bool) {
	return c.changed, c.changedAll
}

// maxChanged bounds the list Changed returns: past it a caller is better
// off comparing every frontend.
const maxChanged = 4096

// sameSettings reports whether what every Service reads is as in the
// previous call. DeepEqual because a Selector need not be comparable with ==.
func (c *Computer) sameSettings(node NodeInfo, nodeAddrs []netip.Addr, in Input) bool {
	return c.primed && node.Name == c.node.Name && node.Zone == c.node.Zone &&
		slices.Equal(nodeAddrs, c.nodeAddrs) && reflect.DeepEqual(in.ServiceSelector, c.selector) &&
		in.Defaults == c.defaults
}

// finish recomputes the entries whose objects changed and brings the
// output up to date.
func (c *Computer) finish() (State, []Warning) {
	for _, e := range c.dirty {
		c.recompute(e)
	}
	c.dirty = shrink(c.dirty)
	all := c.gen == 1
	c.resolve()
	c.changedAll = all || c.changedAll
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
	// Usually every object gone was replaced by a new one of its name.
	gone := 0
	for _, p := range replaced {
		if r := o.records[p]; r != nil && r.seen != gen {
			o.drop(p, name(p), remove)
			gone++
		}
	}
	if gone == before-seenBefore {
		return
	}
	// Some were deleted outright: look at every record.
	for p, r := range o.records {
		if r.seen != gen {
			o.drop(p, name(p), remove)
		}
	}
}

// drop forgets p, named n, passing it to remove.
func (o *objects[T]) drop(p *T, n types.NamespacedName, remove func(*T, *entry)) {
	r := o.records[p]
	if r == nil {
		return
	}
	delete(o.records, p)
	if o.byName[n] == p {
		delete(o.byName, n)
	}
	remove(p, r.e)
}

// put records p, named n, unless it is recorded already, passing it to
// add; the object of that name it replaces is dropped, from whichever
// entry it counted for, as scan drops a replaced object.
func (o *objects[T]) put(p *T, n types.NamespacedName, gen uint64,
	add func(*T) *entry, remove func(*T, *entry)) {
	if o.records[p] != nil {
		return
	}
	if old := o.byName[n]; old != nil {
		o.drop(old, n, remove)
	}
	o.byName[n] = p
	o.records[p] = &record{e: add(p), seen: gen}
}

// scanServices finds the new and gone Services; those the selector
// matches count for the entry of their name.
func (c *Computer) scanServices(list []*corev1.Service) {
	c.services.scan(list, c.gen, serviceName, c.addService, c.removeService)
}

// scanSlices finds the new and gone EndpointSlices; each counts for the
// entry of the Service its label names.
func (c *Computer) scanSlices(list []*discoveryv1.EndpointSlice) {
	c.slices.scan(list, c.gen, sliceName, c.addSlice, c.removeSlice)
}

// updateServices makes list the Services recorded under key.
func (c *Computer) updateServices(key types.NamespacedName, list []*corev1.Service) {
	if len(list) == 0 {
		if old := c.services.byName[key]; old != nil {
			c.services.drop(old, key, c.removeService)
		}
		return
	}
	for _, s := range list {
		if serviceName(s) == key {
			c.services.put(s, key, c.gen, c.addService, c.removeService)
		}
	}
}

// updateSlices makes list the EndpointSlices counted for the Service key:
// those of list that are new are recorded (replacing the object of their
// name wherever it counted), those counted before and not in list are
// dropped.
func (c *Computer) updateSlices(key types.NamespacedName, list []*discoveryv1.EndpointSlice) {
	for _, s := range list {
		if s != nil && s.Namespace == key.Namespace && s.Labels[discoveryv1.LabelServiceName] == key.Name {
			c.slices.put(s, sliceName(s), c.gen, c.addSlice, c.removeSlice)
		}
	}
	e := c.entries[key]
	if e == nil || len(e.slices) == 0 {
		return
	}
	in := func(s *discoveryv1.EndpointSlice) bool { return slices.Contains(list, s) }
	if len(list)*len(e.slices) > 1024 {
		set := make(map[*discoveryv1.EndpointSlice]bool, len(list))
		for _, s := range list {
			set[s] = true
		}
		in = func(s *discoveryv1.EndpointSlice) bool { return set[s] }
	}
	var gone []*discoveryv1.EndpointSlice
	for _, s := range e.slices {
		if !in(s) {
			gone = append(gone, s)
		}
	}
	for _, s := range gone {
		c.slices.drop(s, sliceName(s), c.removeSlice)
	}
}

func serviceName(s *corev1.Service) types.NamespacedName {
	return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
}

func sliceName(s *discoveryv1.EndpointSlice) types.NamespacedName {
	return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
}

func (c *Computer) addService(s *corev1.Service) *entry {
	if c.selector != nil && !c.selector.Matches(labels.Set(s.Labels)) {
		return nil
	}
	e := c.entry(serviceName(s))
	e.svcs = append(e.svcs, s)
	c.markDirty(e)
	return e
}

func (c *Computer) removeService(s *corev1.Service, e *entry) {
	if e != nil {
		e.svcs = removeOne(e.svcs, s)
		c.markDirty(e)
	}
}

func (c *Computer) addSlice(s *discoveryv1.EndpointSlice) *entry {
	// As groupSlices: a slice without the label belongs to no Service.
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil
	}
	e := c.entry(types.NamespacedName{Namespace: s.Namespace, Name: name})
	e.slices = append(e.slices, s)
	c.markDirty(e)
	return e
}

func (c *Computer) removeSlice(s *discoveryv1.EndpointSlice, e *entry) {
	if e != nil {
		e.slices = removeOne(e.slices, s)
		c.markDirty(e)
	}
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
	clear(c.changed)
	c.changed, c.changedAll = c.changed[:0], false
	if len(c.touched) == 0 {
		return
	}
	slices.SortFunc(c.touched, Frontend.Compare)
	c.touched = slices.CompactFunc(c.touched, func(a, b Frontend) bool { return a.Compare(b) == 0 })
	if len(c.touched) <= maxChanged {
		c.changed = append(c.changed, c.touched...)
	} else {
		c.changedAll = true
	}

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

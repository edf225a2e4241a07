package maps

import (
	"errors"
	"fmt"
	"maps"
	"sync"

	"github.com/socklb/socklb"
)

// Fake is an in-memory Maps that stores the same keys and values as the
// kernel's maps and runs the same publish logic. Tests use Lookup to trace
// what a connect would get, and OnWrite to check every intermediate state a
// concurrent reader could see.
type Fake struct {
	*store
	mu      sync.Mutex
	svc     map[socklb.BpfSvcKey]socklb.BpfSvcValue
	be      map[uint32]socklb.BpfBackend
	names   map[uint32]socklb.BpfSvcName
	aff     map[socklb.BpfAffinityKey]socklb.BpfAffinityValue
	cnt     map[uint32]Counters
	onWrite func()
}

// NewFake returns an empty fake.
func NewFake() *Fake {
	f := &Fake{
		svc:   make(map[socklb.BpfSvcKey]socklb.BpfSvcValue),
		be:    make(map[uint32]socklb.BpfBackend),
		names: make(map[uint32]socklb.BpfSvcName),
		aff:   make(map[socklb.BpfAffinityKey]socklb.BpfAffinityValue),
		cnt:   make(map[uint32]Counters),
	}
	f.store = &store{
		svc:   memTable[socklb.BpfSvcKey, socklb.BpfSvcValue]{f, f.svc},
		be:    memTable[uint32, socklb.BpfBackend]{f, f.be},
		names: memTable[uint32, socklb.BpfSvcName]{f, f.names},
		aff:   memTable[socklb.BpfAffinityKey, socklb.BpfAffinityValue]{f, f.aff},
		cnt:   memCounters{f},
	}
	return f
}

// OnWrite registers fn to run after every single element write or delete,
// with no lock held.
func (f *Fake) OnWrite(fn func()) { f.onWrite = fn }

// ErrNoBackend is what Lookup returns for a frontend with no usable backend;
// the program refuses such a connect with ECONNREFUSED.
var ErrNoBackend = errors.New("no backend")

// Lookup resolves fe to the backend in live slot n (0-based, modulo the
// count), as the program would with n as its random number. ok is false
// when fe is not a service. It also counts the connect, as the program does.
func (f *Fake) Lookup(fe Frontend, n uint32) (b Backend, ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := frontendKey(fe, 0)
	if err != nil {
		return Backend{}, false, err
	}
	e, ok := f.svc[k]
	if !ok {
		return Backend{}, false, nil
	}
	c := f.cnt[e.RevNatId]
	defer func() { f.cnt[e.RevNatId] = c }()
	if e.Count == 0 {
		c.Refused++
		return Backend{}, true, ErrNoBackend
	}
	k.Slot = e.Base + uint16(n%uint32(e.Count)) + 1
	slot, ok := f.svc[k]
	if !ok {
		return Backend{}, true, fmt.Errorf("%s: live slot %d missing", fe, k.Slot)
	}
	// Like the program, only the slot is read: its copy of the backend is
	// where the connect goes.
	c.Connects++
	return toBackend(slot.Backend), true, nil
}

// CheckConsistent reports every live entry whose slots or backends a reader
// could fail to find, and every live slot whose copy of its backend is not
// the backend its id names.
func (f *Fake) CheckConsistent() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for k, e := range f.svc {
		if k.Slot != 0 {
			continue
		}
		for i := uint16(1); i <= e.Count; i++ {
			sk := k
			sk.Slot = e.Base + i
			slot, ok := f.svc[sk]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: live slot %d missing", keyFrontend(k), sk.Slot))
				continue
			}
			be, ok := f.be[slot.BackendId]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: backend %d missing", keyFrontend(k), slot.BackendId))
				continue
			}
			if slot.Backend != be {
				errs = append(errs, fmt.Errorf("%s: slot %d holds %s, but backend %d is %s",
					keyFrontend(k), sk.Slot, toBackend(slot.Backend), slot.BackendId, toBackend(be)))
			}
		}
	}
	return errors.Join(errs...)
}

// SetAffinity records that client last used backend for the frontend
// revNAT, as the program does on a connect.
func (f *Fake) SetAffinity(client uint64, revNAT RevNATID, backend BackendID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.aff[socklb.BpfAffinityKey{NetnsCookie: client, RevNatId: uint32(revNAT)}] = socklb.BpfAffinityValue{BackendId: uint32(backend)}
}

// Affinity returns the backend client sticks to for revNAT, if any.
func (f *Fake) Affinity(client uint64, revNAT RevNATID) (BackendID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.aff[socklb.BpfAffinityKey{NetnsCookie: client, RevNatId: uint32(revNAT)}]
	return BackendID(v.BackendId), ok
}

// Len returns the number of entries in the service and backend maps.
func (f *Fake) Len() (svc, be int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.svc), len(f.be)
}

func (f *Fake) wrote() {
	if f.onWrite != nil {
		f.onWrite()
	}
}

type memTable[K comparable, V any] struct {
	f *Fake
	m map[K]V
}

func (t memTable[K, V]) lookup(k K) (V, bool, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	v, ok := t.m[k]
	return v, ok, nil
}

func (t memTable[K, V]) put(k K, v V) error {
	t.f.mu.Lock()
	t.m[k] = v
	t.f.mu.Unlock()
	t.f.wrote()
	return nil
}

func (t memTable[K, V]) create(k K, v V) (bool, error) {
	t.f.mu.Lock()
	_, existed := t.m[k]
	if !existed {
		t.m[k] = v
	}
	t.f.mu.Unlock()
	if !existed {
		t.f.wrote()
	}
	return existed, nil
}

func (t memTable[K, V]) remove(k K) error {
	t.f.mu.Lock()
	delete(t.m, k)
	t.f.mu.Unlock()
	t.f.wrote()
	return nil
}

func (t memTable[K, V]) all() (map[K]V, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return maps.Clone(t.m), nil
}

type memCounters struct{ f *Fake }

func (c memCounters) create(id uint32) error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	if _, ok := c.f.cnt[id]; !ok {
		c.f.cnt[id] = Counters{}
	}
	return nil
}

func (c memCounters) read(id uint32) (Counters, bool, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	v, ok := c.f.cnt[id]
	return v, ok, nil
}

func (c memCounters) all() (map[uint32]Counters, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	return maps.Clone(c.f.cnt), nil
}

func (c memCounters) remove(id uint32) error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	delete(c.f.cnt, id)
	return nil
}

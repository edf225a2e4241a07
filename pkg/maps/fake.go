package maps

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/socklb/socklb"
)

// Fake is an in-memory Maps that stores the same keys and values as the
// kernel's maps, runs the same publish logic and enforces the same
// capacities: an insert into a full map fails with ErrMapFull, replacing an
// existing key does not need room. Tests use Lookup and SendTo to trace
// what a connect or an unconnected send would get, OnWrite to check every
// intermediate state a concurrent reader could see, and FailWrites to make
// single element writes fail.
type Fake struct {
	*store
	mu        sync.Mutex
	svc       map[socklb.BpfSvcKey]socklb.BpfSvcValue
	be        map[uint32]socklb.BpfBackend
	memb      map[socklb.BpfSvcMember]uint8
	names     map[uint32]socklb.BpfSvcName
	aff       map[socklb.BpfAffinityKey]socklb.BpfAffinityValue
	cnt       map[uint32]Counters
	stat      map[uint32]socklb.BpfBackendStats
	ej        map[socklb.BpfBackend]socklb.BpfEjection
	avoid     map[uint32]uint64
	vip       map[socklb.BpfVipKey]socklb.BpfVipValue
	onWrite   func()
	failWrite func(Write) error
}

// Write is one element write or delete of the Fake, for FailWrites.
type Write struct {
	// Map is the BPF map's name, e.g. socklb.BpfMapSocklbMembV3.
	Map string
	// Delete is true for a delete, false for an insert or update.
	Delete bool
}

// NewFake returns an empty fake with the capacities of the compiled
// objects (DefaultCapacity).
func NewFake() *Fake { return NewFakeWithCapacity(Capacity{}) }

// NewFakeWithCapacity returns an empty fake whose maps hold at most c's
// entries; a zero field takes the compiled objects' max_entries.
func NewFakeWithCapacity(c Capacity) *Fake {
	def, _ := DefaultCapacity() // the embedded objects always parse
	orDefault := func(n, d int) int {
		if n > 0 {
			return n
		}
		return d
	}
	c = Capacity{
		Services: orDefault(c.Services, def.Services),
		Backends: orDefault(c.Backends, def.Backends),
		Members:  orDefault(c.Members, def.Members),
		Counters: orDefault(c.Counters, def.Counters),
		Names:    orDefault(c.Names, def.Names),
		VIPs:     orDefault(c.VIPs, def.VIPs),
	}
	f := &Fake{
		svc:   make(map[socklb.BpfSvcKey]socklb.BpfSvcValue),
		be:    make(map[uint32]socklb.BpfBackend),
		memb:  make(map[socklb.BpfSvcMember]uint8),
		names: make(map[uint32]socklb.BpfSvcName),
		aff:   make(map[socklb.BpfAffinityKey]socklb.BpfAffinityValue),
		cnt:   make(map[uint32]Counters),
		stat:  make(map[uint32]socklb.BpfBackendStats),
		ej:    make(map[socklb.BpfBackend]socklb.BpfEjection),
		avoid: make(map[uint32]uint64),
		vip:   make(map[socklb.BpfVipKey]socklb.BpfVipValue),
	}
	f.store = &store{
		svc:      memTable[socklb.BpfSvcKey, socklb.BpfSvcValue]{f, f.svc, socklb.BpfMapSocklbSvcV3, c.Services},
		be:       memTable[uint32, socklb.BpfBackend]{f, f.be, socklb.BpfMapSocklbBeV3, c.Backends},
		memb:     memTable[socklb.BpfSvcMember, uint8]{f, f.memb, socklb.BpfMapSocklbMembV3, c.Members},
		names:    memTable[uint32, socklb.BpfSvcName]{f, f.names, socklb.BpfMapSocklbNameV3, c.Names},
		aff:      memTable[socklb.BpfAffinityKey, socklb.BpfAffinityValue]{f, f.aff, socklb.BpfMapSocklbAffV3, 0},
		cnt:      memCounters{f, c.Counters},
		stat:     memTable[uint32, socklb.BpfBackendStats]{f, f.stat, socklb.BpfMapSocklbBestatV3, c.Backends},
		ej:       memTable[socklb.BpfBackend, socklb.BpfEjection]{f, f.ej, socklb.BpfMapSocklbEjectV3, c.Backends},
		avoid:    memTable[uint32, uint64]{f, f.avoid, socklb.BpfMapSocklbAvoidV3, c.Backends},
		vip:      memTable[socklb.BpfVipKey, socklb.BpfVipValue]{f, f.vip, socklb.BpfMapSocklbVipV3, c.VIPs},
		capacity: c,
	}
	return f
}

// OnWrite registers fn to run after every single element write or delete,
// with no lock held.
func (f *Fake) OnWrite(fn func()) { f.onWrite = fn }

// FailWrites makes every element write or delete ask fn first; an error
// fails that write, nothing is written, and the error reaches the caller as
// the kernel's would (named after the map; return ErrNoMemory or
// ErrMapFull to have errors.Is find them). fn runs with the fake locked:
// it must not call the fake. nil clears it.
func (f *Fake) FailWrites(fn func(Write) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failWrite = fn
}

// ErrNoBackend is what Lookup returns for a frontend with no usable backend;
// the program refuses such a connect with ECONNREFUSED.
var ErrNoBackend = errors.New("no backend")

// ErrUnknownPort is what Lookup and SendTo return for a cluster IP (see
// AddVIP) at a port and protocol that no frontend has; the program refuses
// such a connect or send with ECONNREFUSED and counts it.
var ErrUnknownPort = errors.New("cluster IP at a port without a frontend")

// Lookup resolves fe to the backend in live slot n (0-based, modulo the
// count), as the program would with n as its random number. ok is false
// when fe is not a frontend; err is then ErrUnknownPort if fe's address is
// a cluster IP, else nil (the connect goes to fe itself). It also counts
// the connect, as the program does.
func (f *Fake) Lookup(fe Frontend, n uint32) (b Backend, ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, b, ok, err = f.selectLocked(fe, n)
	return b, ok, err
}

// selectLocked is the program's lb_select without affinity: it picks live
// slot n of fe and counts the outcome.
func (f *Fake) selectLocked(fe Frontend, n uint32) (slot socklb.BpfSvcValue, b Backend, ok bool, err error) {
	k, err := frontendKey(fe, 0)
	if err != nil {
		return slot, Backend{}, false, err
	}
	e, ok := f.svc[k]
	if !ok {
		return slot, Backend{}, false, f.refuseLocked(k)
	}
	c := f.cnt[e.RevNatId]
	defer func() { f.cnt[e.RevNatId] = c }()
	if e.Count == 0 {
		c.Refused++
		return slot, Backend{}, true, ErrNoBackend
	}
	k.Slot = e.Base + uint16(n%uint32(e.Count)) + 1
	slot, ok = f.svc[k]
	if !ok {
		return slot, Backend{}, true, fmt.Errorf("%s: live slot %d missing", fe, k.Slot)
	}
	// Like the program, only the slot is read: its copy of the backend is
	// where the connect goes.
	c.Connects++
	return slot, toBackend(slot.Backend), true, nil
}

// refuseLocked is the program's vip_refuse for a frontend key that missed:
// ErrUnknownPort, counted, if the address is a cluster IP, else nil.
func (f *Fake) refuseLocked(k socklb.BpfSvcKey) error {
	vk := socklb.BpfVipKey{Addr: k.Addr}
	v, ok := f.vip[vk]
	if !ok {
		return nil
	}
	v.Refused++
	f.vip[vk] = v
	return ErrUnknownPort
}

// UDPSocket is what the program remembers of one unconnected UDP socket
// (its sock_state), for SendTo. The zero value is a new socket.
type UDPSocket struct {
	sent    bool
	vip     Frontend // address and port; the program does not keep proto
	revNAT  uint32
	backend uint32
}

// Backend returns the backend the socket was last sent to by a rewrite.
func (s *UDPSocket) Backend() (BackendID, bool) { return BackendID(s.backend), s.sent }

// SendTo traces an unconnected sendto(fe) from sock, as the program's
// sendmsg hook does: ok is false when fe is not a service (the datagram
// goes to fe itself); a frontend without backends refuses (ErrNoBackend).
// The socket keeps the backend it was sent to before while the live entry
// of fe has the same frontend id and that backend's member entry exists;
// it then goes to the backend map's value for the id. Otherwise it goes to
// live slot n, as Lookup, and the socket remembers it. Every send that
// goes to a backend is counted as a connect. A cluster IP at a port that
// no frontend has is refused, as by Lookup.
func (f *Fake) SendTo(sock *UDPSocket, fe Frontend, n uint32) (b Backend, ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := frontendKey(fe, 0)
	if err != nil {
		return Backend{}, false, err
	}
	e, ok := f.svc[k]
	if !ok {
		return Backend{}, false, f.refuseLocked(k)
	}
	vip := keyFrontend(k)
	vip.Proto = 0
	if e.Count > 0 && sock.sent && sock.vip == vip && sock.revNAT == e.RevNatId {
		_, member := f.memb[socklb.BpfSvcMember{RevNatId: e.RevNatId, BackendId: sock.backend}]
		if be, found := f.be[sock.backend]; member && found {
			c := f.cnt[e.RevNatId]
			c.Connects++
			f.cnt[e.RevNatId] = c
			return toBackend(be), true, nil
		}
	}
	slot, b, ok, err := f.selectLocked(fe, n)
	if err != nil || !ok {
		return b, ok, err
	}
	*sock = UDPSocket{sent: true, vip: vip, revNAT: e.RevNatId, backend: slot.BackendId}
	return b, true, nil
}

// CheckConsistent reports every live entry whose slots or backends a reader
// could fail to find, every live slot whose copy of its backend is not the
// backend its id names, and every backend of a live set without its member
// entry. Member entries of backends a live set does not list are not
// reported: a publish writes them ahead of the entry, and Services reports
// those that stay.
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
			if _, ok := f.memb[socklb.BpfSvcMember{RevNatId: e.RevNatId, BackendId: slot.BackendId}]; !ok {
				errs = append(errs, fmt.Errorf("%s: backend %d of slot %d has no member entry", keyFrontend(k), slot.BackendId, sk.Slot))
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

// Members returns the number of entries in the member map.
func (f *Fake) Members() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.memb)
}

func (f *Fake) wrote() {
	if f.onWrite != nil {
		f.onWrite()
	}
}

// checkWriteLocked asks FailWrites about one write.
func (f *Fake) checkWriteLocked(name string, del bool) error {
	if f.failWrite == nil {
		return nil
	}
	return mapError(name, f.failWrite(Write{Map: name, Delete: del}))
}

// errFull is the kernel's answer to an insert into a full hash map.
func errFull(name string, max int) error {
	return mapError(name, fmt.Errorf("%w (max_entries %d)", ErrMapFull, max))
}

type memTable[K comparable, V any] struct {
	f    *Fake
	m    map[K]V
	name string
	max  int // 0: unlimited
}

func (t memTable[K, V]) lookup(k K) (V, bool, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	v, ok := t.m[k]
	return v, ok, nil
}

func (t memTable[K, V]) put(k K, v V) error {
	t.f.mu.Lock()
	if err := t.f.checkWriteLocked(t.name, false); err != nil {
		t.f.mu.Unlock()
		return err
	}
	if _, ok := t.m[k]; !ok && t.max > 0 && len(t.m) >= t.max {
		t.f.mu.Unlock()
		return errFull(t.name, t.max)
	}
	t.m[k] = v
	t.f.mu.Unlock()
	t.f.wrote()
	return nil
}

func (t memTable[K, V]) create(k K, v V) (bool, error) {
	t.f.mu.Lock()
	if err := t.f.checkWriteLocked(t.name, false); err != nil {
		t.f.mu.Unlock()
		return false, err
	}
	_, existed := t.m[k]
	if !existed {
		if t.max > 0 && len(t.m) >= t.max {
			t.f.mu.Unlock()
			return false, errFull(t.name, t.max)
		}
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
	if err := t.f.checkWriteLocked(t.name, true); err != nil {
		t.f.mu.Unlock()
		return err
	}
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

type memCounters struct {
	f   *Fake
	max int
}

func (c memCounters) create(id uint32) error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	if err := c.f.checkWriteLocked(socklb.BpfMapSocklbCntV3, false); err != nil {
		return err
	}
	if _, ok := c.f.cnt[id]; !ok {
		if c.max > 0 && len(c.f.cnt) >= c.max {
			return errFull(socklb.BpfMapSocklbCntV3, c.max)
		}
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
	if err := c.f.checkWriteLocked(socklb.BpfMapSocklbCntV3, true); err != nil {
		return err
	}
	delete(c.f.cnt, id)
	return nil
}

// DeleteSlot removes the n-th slot of fe's live set, as `bpftool map
// delete` of that key would: the damage a restore and a reconciliation
// must repair.
func (f *Fake) DeleteSlot(fe Frontend, n uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key, err := frontendKey(fe, 0)
	if err != nil {
		return err
	}
	e, ok := f.svc[key]
	if !ok || n >= e.Count {
		return fmt.Errorf("%s has no live slot %d", fe, n)
	}
	key.Slot = e.Base + 1 + n
	delete(f.svc, key)
	return nil
}

// MarkAvoided does what the sock_ops program does when a backend's
// failures in a row reach the threshold.
func (f *Fake) MarkAvoided(id BackendID) { f.avoid[uint32(id)] = 1 }

// Avoided returns the backends marked and not yet Decided, sorted.
func (f *Fake) Avoided() []BackendID {
	var out []BackendID
	for id := range f.avoid {
		out = append(out, BackendID(id))
	}
	slices.Sort(out)
	return out
}

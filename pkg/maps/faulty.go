package maps

import (
	"fmt"
	"net/netip"
	"sync"
)

// Op names a Maps method, for fault injection.
type Op string

// Operations Faulty can fail.
const (
	OpUpsertBackend  Op = "UpsertBackend"
	OpDeleteBackend  Op = "DeleteBackend"
	OpPublishService Op = "PublishService"
	OpDeleteService  Op = "DeleteService"
	OpServices       Op = "Services"
	OpBackends       Op = "Backends"
	OpPrune          Op = "Prune"
	OpAddVIP         Op = "AddVIP"
	OpDeleteVIP      Op = "DeleteVIP"
	OpVIPs           Op = "VIPs"
)

// Faulty wraps Maps and fails the calls that Fail says to, without
// passing them on. Tests use it to drive the reconciler's error paths.
type Faulty struct {
	Inner Maps
	mu    sync.Mutex
	// fail is asked before every call; a non-nil error fails the call.
	fail func(op Op) error
}

// FailNth returns a fault decision that fails the n-th call (from 1) of op
// with err, and no other call. FailNth(OpPublishService, 3, ErrNoMemory)
// makes the third publish fail as a failed per-CPU allocation would.
func FailNth(op Op, n int, err error) func(Op) error {
	var mu sync.Mutex
	calls := 0
	return func(o Op) error {
		if o != op {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == n {
			return fmt.Errorf("injected fault in call %d of %s: %w", n, op, err)
		}
		return nil
	}
}

// NewFaulty wraps inner; fail decides which calls fail.
func NewFaulty(inner Maps, fail func(op Op) error) *Faulty {
	return &Faulty{Inner: inner, fail: fail}
}

// SetFail replaces the fault decision.
func (f *Faulty) SetFail(fail func(op Op) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fail
}

func (f *Faulty) check(op Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		return nil
	}
	return f.fail(op)
}

func (f *Faulty) UpsertBackend(id BackendID, b Backend) error {
	if err := f.check(OpUpsertBackend); err != nil {
		return err
	}
	return f.Inner.UpsertBackend(id, b)
}

func (f *Faulty) DeleteBackend(id BackendID) error {
	if err := f.check(OpDeleteBackend); err != nil {
		return err
	}
	return f.Inner.DeleteBackend(id)
}

func (f *Faulty) PublishService(s Service) error {
	if err := f.check(OpPublishService); err != nil {
		return err
	}
	return f.Inner.PublishService(s)
}

func (f *Faulty) DeleteService(fe Frontend) error {
	if err := f.check(OpDeleteService); err != nil {
		return err
	}
	return f.Inner.DeleteService(fe)
}

func (f *Faulty) Services() ([]Service, error) {
	if err := f.check(OpServices); err != nil {
		return nil, err
	}
	return f.Inner.Services()
}

func (f *Faulty) Backends() (map[BackendID]Backend, error) {
	if err := f.check(OpBackends); err != nil {
		return nil, err
	}
	return f.Inner.Backends()
}

func (f *Faulty) Counters(id RevNATID) (Counters, error) { return f.Inner.Counters(id) }

func (f *Faulty) Capacity() Capacity { return f.Inner.Capacity() }

func (f *Faulty) AddVIP(addr netip.Addr) error {
	if err := f.check(OpAddVIP); err != nil {
		return err
	}
	return f.Inner.AddVIP(addr)
}

func (f *Faulty) DeleteVIP(addr netip.Addr) error {
	if err := f.check(OpDeleteVIP); err != nil {
		return err
	}
	return f.Inner.DeleteVIP(addr)
}

func (f *Faulty) VIPs() ([]netip.Addr, error) {
	if err := f.check(OpVIPs); err != nil {
		return nil, err
	}
	return f.Inner.VIPs()
}

func (f *Faulty) Prune() (int, error) {
	if err := f.check(OpPrune); err != nil {
		return 0, err
	}
	return f.Inner.Prune()
}

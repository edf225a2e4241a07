// Package maps is the typed Go API over socklb's BPF maps: the service map
// (Cilium-style slots, each backend slot with a copy of its backend), the
// backend map, per-CPU counters and frontend names.
// It owns the map contract's byte order and the double-buffered publish that
// lets readers never see a mix of two backend sets. The same logic runs over
// the kernel's maps (New) and over an in-memory fake (NewFake).
package maps

import (
	"errors"
	"fmt"
	"net/netip"
)

// BackendID identifies a backend in the backend map.
type BackendID uint32

// RevNATID identifies a frontend; it keys counters and names.
type RevNATID uint32

// Protocol numbers accepted in Frontend and Backend.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// slotHalf splits a service's slots in two halves; it mirrors
// SOCKLB_SLOT_HALF in bpf/socklb.h.
const slotHalf = 0x8000

// MaxBackendsPerService is how many backends one frontend can hold.
const MaxBackendsPerService = slotHalf - 1

// nameLen mirrors SOCKLB_NAME_LEN.
const nameLen = 128

// Sentinel errors callers branch on.
var (
	// ErrTooManyBackends: a service has more backends than one half of its slots.
	ErrTooManyBackends = errors.New("too many backends for one service")
	// ErrUnsupported: the address or protocol cannot be programmed.
	ErrUnsupported = errors.New("unsupported frontend or backend")
	// ErrBackendChanged: a backend id in use was given another backend.
	// Service slots hold copies of their backends, so an id's backend
	// is fixed until the id is deleted.
	ErrBackendChanged = errors.New("backend id already holds another backend")
	// ErrUnknownBackend: a service lists a backend id that is not in the
	// backend map.
	ErrUnknownBackend = errors.New("unknown backend id")
)

// Frontend is a service address as the programs look it up.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), protoName(f.Proto))
}

// Backend is where a connect to a frontend is sent.
type Backend struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

func (b Backend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(b.Addr, b.Port), protoName(b.Proto))
}

// Flags of a service entry; they mirror enum socklb_svc_flags.
const (
	FlagAffinity uint16 = 1 << 0
	FlagLocal    uint16 = 1 << 1
	FlagNodePort uint16 = 1 << 2
	FlagExternal uint16 = 1 << 3
)

// Service is one frontend's entry: its id, flags and ordered backend ids.
type Service struct {
	Frontend Frontend
	RevNATID RevNATID
	Flags    uint16
	// AffinityTimeout is in seconds; it applies with FlagAffinity.
	AffinityTimeout uint32
	// Name is "namespace/name:port", kept for inspect and bpftool.
	Name     string
	Backends []BackendID
}

// Departure is a backend that left a frontend: sockets connected from the
// frontend to the backend are stale and may be destroyed.
type Departure struct {
	RevNATID RevNATID
	Backend  BackendID
}

// Counters are a frontend's counters summed over all CPUs.
type Counters struct {
	Connects uint64
	Refused  uint64
}

// Maps is what the reconciler writes through. Every method is idempotent;
// deleting what is not there is success.
type Maps interface {
	// UpsertBackend creates a backend; writing the same backend again is
	// success. The slots of published services hold copies of their
	// backends, so an id keeps its backend until DeleteBackend: another
	// backend for an existing id is ErrBackendChanged.
	UpsertBackend(id BackendID, b Backend) error
	// DeleteBackend removes a backend.
	DeleteBackend(id BackendID) error
	// PublishService makes s's backend set live in one step: a reader sees
	// either the old set or the new one, never a mix. Every backend must
	// exist (ErrUnknownBackend otherwise): each slot gets a copy of it.
	// Affinity entries that point at a backend no longer in the set are
	// dropped.
	PublishService(s Service) error
	// DeleteService removes a frontend, its slots, counters, name and
	// affinity entries.
	DeleteService(fe Frontend) error
	// Services returns every published frontend.
	Services() ([]Service, error)
	// Backends returns every backend.
	Backends() (map[BackendID]Backend, error)
	// Counters returns the counters of one frontend.
	Counters(id RevNATID) (Counters, error)
	// Prune deletes slots that no live service entry refers to, left
	// behind by an interrupted publish. It returns how many it deleted.
	Prune() (int, error)
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	}
	return fmt.Sprintf("proto(%d)", p)
}

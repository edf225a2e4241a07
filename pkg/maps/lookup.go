package maps

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
)

// Reader looks single entries up: what `inspect why` shows of one
// frontend. Reading every map, as Services does, would cost a
// reconciliation's work at 100 000 frontends for one question.
type Reader interface {
	// Frontend returns fe's entry and live slots, with Damage filled in
	// for slots that are missing; false when fe is not published.
	Frontend(fe Frontend) (Service, bool, error)
	// Counters returns the counters of one frontend.
	Counters(id RevNATID) (Counters, error)
	// Backend returns a backend of the backend map.
	Backend(id BackendID) (Backend, bool, error)
	// BackendStat returns one backend's connect outcomes; false when
	// none was counted.
	BackendStat(id BackendID) (BackendStats, bool, error)
	// ClientAffinity returns the sticky backend of a client (its network
	// namespace cookie) for a frontend; false when it has none.
	ClientAffinity(client uint64, revNAT RevNATID) (Affinity, bool, error)
	// VIP says whether addr is in the cluster IP map (connects to it at
	// a port without a frontend are refused) and how many were.
	VIP(addr netip.Addr) (refused uint64, ok bool, err error)
}

// Affinity is a client's sticky backend for one frontend.
type Affinity struct {
	Backend BackendID
	// LastUsed is the time of its last connect on the boot-time clock
	// (CLOCK_BOOTTIME).
	LastUsed time.Duration
}

// NewReader returns a Reader over the kernel's maps.
func NewReader(m *socklb.BpfMaps) Reader { return New(m).(*store) }

var _ Reader = (*store)(nil)

func (s *store) Frontend(fe Frontend) (Service, bool, error) {
	k, err := frontendKey(fe, 0)
	if err != nil {
		return Service{}, false, err
	}
	v, ok, err := s.svc.lookup(k)
	if err != nil || !ok {
		return Service{}, false, wrapLookup(err, "frontend %s", fe)
	}
	svc := Service{
		Frontend: fe, RevNATID: RevNATID(v.RevNatId), Flags: v.Flags,
		AffinityTimeout: v.AffinityTimeout, Backends: make([]BackendID, 0, v.Count),
	}
	if n, ok, err := s.names.lookup(v.RevNatId); err != nil {
		return Service{}, false, wrapLookup(err, "name %d", v.RevNatId)
	} else if ok {
		svc.Name = decodeName(n)
	}
	for i := uint16(1); i <= v.Count; i++ {
		k.Slot = v.Base + i
		slot, ok, err := s.svc.lookup(k)
		if err != nil {
			return Service{}, false, wrapLookup(err, "frontend %s slot %d", fe, k.Slot)
		}
		if !ok {
			svc.Damage = append(svc.Damage, fmt.Sprintf("live slot %d is missing", k.Slot))
			continue
		}
		svc.Backends = append(svc.Backends, BackendID(slot.BackendId))
	}
	return svc, true, nil
}

func (s *store) Backend(id BackendID) (Backend, bool, error) {
	v, ok, err := s.be.lookup(uint32(id))
	if err != nil || !ok {
		return Backend{}, false, wrapLookup(err, "backend %d", id)
	}
	return toBackend(v), true, nil
}

func (s *store) BackendStat(id BackendID) (BackendStats, bool, error) {
	v, ok, err := s.stat.lookup(uint32(id))
	if err != nil || !ok {
		return BackendStats{}, false, wrapLookup(err, "backend stats %d", id)
	}
	return BackendStats{Open: v.Open, Established: v.Established, Failed: v.Failed,
		Consecutive: v.Consecutive, LastFailure: time.Duration(v.LastFailureNs)}, true, nil
}

func (s *store) ClientAffinity(client uint64, revNAT RevNATID) (Affinity, bool, error) {
	v, ok, err := s.aff.lookup(socklb.BpfAffinityKey{NetnsCookie: client, RevNatId: uint32(revNAT)})
	if err != nil || !ok {
		return Affinity{}, false, wrapLookup(err, "affinity of client %d for frontend %d", client, revNAT)
	}
	return Affinity{Backend: BackendID(v.BackendId), LastUsed: time.Duration(v.LastUsedNs)}, true, nil
}

// wrapLookup gives a failed lookup its context; nil stays nil.
func wrapLookup(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("look up "+format+": %w", append(args, err)...)
}

// BootTime reads CLOCK_BOOTTIME, the clock of the maps' timestamps
// (bpf_ktime_get_boot_ns).
func BootTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("boot time clock: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

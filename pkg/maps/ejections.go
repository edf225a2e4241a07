package maps

import (
	"fmt"
	"time"

	"github.com/socklb/socklb"
)

// Ejection is one outlier ejection as the agent keeps it in the ejection
// map (struct ejection), so that a restarted agent goes on with it.
type Ejection struct {
	// Ejections is the multiplier of the ejection time.
	Ejections uint32
	// At and Until bound the current or last ejection.
	At, Until time.Time
}

// Ejections is the pinned record of the agent's outlier ejections, keyed
// by backend, which no program reads, and the datapath's list of the
// backends it avoids until the agent has decided on them.
type Ejections interface {
	Ejections() (map[Backend]Ejection, error)
	PutEjection(Backend, Ejection) error
	DeleteEjection(Backend) error
	// Decided tells the datapath that the agent's decisions on ids are
	// in the maps: connects stop avoiding them.
	Decided(ids []BackendID) error
}

var _ Ejections = (*store)(nil)

func backendKey(b Backend) (socklb.BpfBackend, error) {
	if !b.Addr.IsValid() || b.Addr.Zone() != "" {
		return socklb.BpfBackend{}, fmt.Errorf("backend %s: address: %w", b, ErrUnsupported)
	}
	return socklb.BpfBackend{Addr: addrToBE(b.Addr), Port: portToBE16(b.Port), Proto: b.Proto}, nil
}

// Ejections reads the ejection map once.
func (s *store) Ejections() (map[Backend]Ejection, error) {
	all, err := s.ej.all()
	if err != nil {
		return nil, fmt.Errorf("read ejections: %w", err)
	}
	out := make(map[Backend]Ejection, len(all))
	for k, v := range all {
		out[toBackend(k)] = Ejection{Ejections: v.Ejections,
			At: time.Unix(0, int64(v.AtNs)), Until: time.Unix(0, int64(v.UntilNs))}
	}
	return out, nil
}

// PutEjection writes b's ejection.
func (s *store) PutEjection(b Backend, e Ejection) error {
	k, err := backendKey(b)
	if err != nil {
		return err
	}
	v := socklb.BpfEjection{Ejections: e.Ejections, AtNs: uint64(e.At.UnixNano()), UntilNs: uint64(e.Until.UnixNano())}
	if err := s.ej.put(k, v); err != nil {
		return fmt.Errorf("write ejection of %s: %w", b, err)
	}
	return nil
}

// DeleteEjection removes b's ejection; a missing one is success.
func (s *store) DeleteEjection(b Backend) error {
	k, err := backendKey(b)
	if err != nil {
		return err
	}
	if err := s.ej.remove(k); err != nil {
		return fmt.Errorf("delete ejection of %s: %w", b, err)
	}
	return nil
}

// NewEjections returns the ejection record in m's maps.
func NewEjections(m *socklb.BpfMaps) Ejections { return New(m).(*store) }

// Decided deletes ids from the avoid map; missing ones are success.
func (s *store) Decided(ids []BackendID) error {
	for _, id := range ids {
		if err := s.avoid.remove(uint32(id)); err != nil {
			return fmt.Errorf("stop avoiding backend %d: %w", id, err)
		}
	}
	return nil
}

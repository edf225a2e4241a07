package maps

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/socklb/socklb"
)

// vipKey is the cluster IP map's key of addr: the 16 bytes of the service
// map's keys, IPv4 mapped.
func vipKey(addr netip.Addr) (socklb.BpfVipKey, error) {
	if !addr.IsValid() || addr.Zone() != "" {
		return socklb.BpfVipKey{}, fmt.Errorf("cluster IP %s: %w", addr, ErrUnsupported)
	}
	return socklb.BpfVipKey{Addr: addrToBE(addr)}, nil
}

// AddVIP creates the entry only if it is absent, so that the refusals
// counted so far stay.
func (s *store) AddVIP(addr netip.Addr) error {
	k, err := vipKey(addr)
	if err != nil {
		return fmt.Errorf("add: %w", err)
	}
	if _, err := s.vip.create(k, socklb.BpfVipValue{}); err != nil {
		return fmt.Errorf("add cluster IP %s: %w", addr, err)
	}
	return nil
}

// DeleteVIP removes addr; a missing one is success.
func (s *store) DeleteVIP(addr netip.Addr) error {
	k, err := vipKey(addr)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := s.vip.remove(k); err != nil {
		return fmt.Errorf("delete cluster IP %s: %w", addr, err)
	}
	return nil
}

// VIPs reads the cluster IP map once.
func (s *store) VIPs() ([]netip.Addr, error) {
	all, err := s.vip.all()
	if err != nil {
		return nil, fmt.Errorf("read cluster IP map: %w", err)
	}
	out := make([]netip.Addr, 0, len(all))
	for k := range all {
		out = append(out, beToAddr(k.Addr))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// VIPRefusals reads the cluster IP map once.
func (s *store) VIPRefusals() (map[netip.Addr]uint64, error) {
	all, err := s.vip.all()
	if err != nil {
		return nil, fmt.Errorf("read cluster IP map: %w", err)
	}
	out := make(map[netip.Addr]uint64, len(all))
	for k, v := range all {
		out[beToAddr(k.Addr)] = v.Refused
	}
	return out, nil
}

// VIP looks one address up in the cluster IP map: whether a connect to it
// at a port without a frontend is refused, and how many were. One lookup,
// for a question about one address (what `inspect why` asks).
func (s *store) VIP(addr netip.Addr) (refused uint64, ok bool, err error) {
	k, err := vipKey(addr)
	if err != nil {
		return 0, false, err
	}
	v, ok, err := s.vip.lookup(k)
	if err != nil {
		return 0, false, fmt.Errorf("look up cluster IP %s: %w", addr, err)
	}
	return v.Refused, ok, nil
}

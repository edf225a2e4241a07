package reconciler

import (
	"cmp"
	"slices"
	"time"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// toMaps converts a model frontend to what the dataplane programs. ok is
// false for what it cannot program: a backend of another family than its
// frontend (the model never makes one; the check keeps the maps sane).
func toMaps(s lb.Service) (desiredService, bool) {
	d := desiredService{
		fe:       frontendOf(s.Frontend),
		service:  s.Name.String(),
		name:     serviceName(s),
		flags:    flagsOf(s),
		affinity: uint32(s.AffinityTimeout / time.Second),
	}
	if !d.fe.Addr.IsValid() {
		return desiredService{}, false
	}
	for _, b := range s.Backends {
		a := b.Addr.Unmap()
		if a.Is4() != d.fe.Addr.Is4() {
			return desiredService{}, false
		}
		d.backends = append(d.backends, maps.Backend{Addr: a, Port: b.Port, Proto: uint8(s.Frontend.Proto)})
	}
	for _, b := range s.Ejected {
		d.ejected = append(d.ejected, maps.Backend{Addr: b.Addr.Unmap(), Port: b.Port, Proto: uint8(s.Frontend.Proto)})
	}
	return d, true
}

func flagsOf(s lb.Service) uint16 {
	var f uint16
	if s.AffinityTimeout > 0 {
		f |= maps.FlagAffinity
	}
	if s.TrafficLocal {
		f |= maps.FlagLocal
	}
	if s.Policy == lb.PolicyLeastConnections {
		f |= maps.FlagLeastConn
	}
	if s.OutlierDetection {
		f |= maps.FlagOutlier
	}
	switch s.Kind {
	case lb.KindNodePort:
		f |= maps.FlagNodePort
	case lb.KindExternalIP, lb.KindLoadBalancer:
		f |= maps.FlagExternal
	}
	return f
}

func serviceName(s lb.Service) string {
	n := s.Name.String()
	if s.PortName != "" {
		n += ":" + s.PortName
	}
	return n
}

// sortFrontends sorts fes, so that deletes happen in a stable order.
func sortFrontends(fes []maps.Frontend) {
	slices.SortFunc(fes, compareFrontends)
}

func compareFrontends(a, b maps.Frontend) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}

// frontendOf is the dataplane's frontend of a model frontend, as toMaps
// makes it.
func frontendOf(f lb.Frontend) maps.Frontend {
	return maps.Frontend{Addr: f.Addr.Unmap(), Port: f.Port, Proto: uint8(f.Proto)}
}

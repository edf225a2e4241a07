package maps

import (
	"cmp"
	"slices"
)

func sortServices(s []Service) {
	slices.SortFunc(s, func(a, b Service) int {
		if c := a.Frontend.Addr.Compare(b.Frontend.Addr); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Frontend.Port, b.Frontend.Port); c != 0 {
			return c
		}
		return cmp.Compare(a.Frontend.Proto, b.Frontend.Proto)
	})
}

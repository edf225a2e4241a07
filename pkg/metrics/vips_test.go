package metrics

import (
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/socklb/socklb/pkg/maps"
)

// TestUnknownPortRefusalsSumClusterIPsAndNeverFall: the counter is the
// sum over the cluster IP map's entries; an address's count goes with its
// entry, and the total must not fall when it does (Prometheus would read
// a reset), nor when the address comes back counting from 0.
func TestUnknownPortRefusalsSumClusterIPsAndNeverFall(t *testing.T) {
	f := maps.NewFake()
	a, b := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("2001:2::1")
	for _, addr := range []netip.Addr{a, b} {
		if err := f.AddVIP(addr); err != nil {
			t.Fatal(err)
		}
	}
	refuse := func(addr netip.Addr, n int) {
		t.Helper()
		for range n {
			fe := maps.Frontend{Addr: addr, Port: 81, Proto: maps.ProtoTCP}
			if _, _, err := f.Lookup(fe, 0); !errors.Is(err, maps.ErrUnknownPort) {
				t.Fatalf("connect to %s: %v, want ErrUnknownPort", fe, err)
			}
		}
	}
	d := NewDatapath(f, nil, nil, slog.New(slog.DiscardHandler))
	expect := func(n int) {
		t.Helper()
		want := `
# HELP socklb_unknown_port_refusals_total Connects and sends to a cluster IP at a port and protocol that its Service does not have, refused with ECONNREFUSED.
# TYPE socklb_unknown_port_refusals_total counter
socklb_unknown_port_refusals_total ` + strconv.Itoa(n) + "\n"
		if err := testutil.CollectAndCompare(d, strings.NewReader(want), "socklb_unknown_port_refusals_total"); err != nil {
			t.Fatal(err)
		}
	}

	expect(0)
	refuse(a, 3)
	refuse(b, 1)
	expect(4)
	// a's Service is deleted: its entry and count go.
	if err := f.DeleteVIP(a); err != nil {
		t.Fatal(err)
	}
	expect(4)
	// It comes back (a new Service with that address), from 0.
	if err := f.AddVIP(a); err != nil {
		t.Fatal(err)
	}
	refuse(a, 1)
	expect(5)
	refuse(b, 2)
	expect(7)
	if problems, err := testutil.CollectAndLint(d); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

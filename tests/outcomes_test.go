package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// TestPrivilegedConnectOutcomesAreCounted checks the sock_ops program's
// bookkeeping with real sockets: established connects count and close
// again (open back to 0), a refused connect (an address with no listener,
// so RST) counts as failed and consecutive, an established one resets
// consecutive, and from the threshold's failure on each failure is one
// event in the ring buffer.
func TestPrivilegedConnectOutcomesAreCounted(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "pod-1", "198.18.0.1", 8080)
	// 198.18.0.2 is a local address of the netns with nothing on 8080.
	if err := d.ns.AddAddr(netip.MustParsePrefix("198.18.0.2/32")); err != nil && !errors.Is(err, syscall.EEXIST) {
		t.Fatal(err)
	}
	live := service(vip, 80, lb.TCP, "198.18.0.1:8080")
	dead := service(other, 80, lb.TCP, "198.18.0.2:8080")
	d.apply(t, live, dead)
	ids := backendIDs(t, d)
	liveID, deadID := ids["198.18.0.1:8080/TCP"], ids["198.18.0.2:8080/TCP"]

	rd, err := ringbuf.NewReader(d.dp.Maps.SocklbEventsV3)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	for range 20 {
		if _, err := d.ask("tcp4", vip+":80"); err != nil {
			t.Fatal(err)
		}
	}
	const fails = 5
	for range fails {
		if _, err := d.ask("tcp4", other+":80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to the dead backend: %v, want ECONNREFUSED", err)
		}
	}
	stats, err := maps.NewStats(&d.dp.Maps).BackendStats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live %+v, dead %+v", stats[liveID], stats[deadID])
	if s := stats[liveID]; s.Established != 20 || s.Failed != 0 || s.Open != 0 || s.Consecutive != 0 {
		t.Errorf("live backend: %+v, want 20 established, 0 open, 0 failed", s)
	}
	if s := stats[deadID]; s.Established != 0 || s.Failed != fails || s.Open != 0 || s.Consecutive != fails || s.LastFailure == 0 {
		t.Errorf("dead backend: %+v, want %d failed and consecutive, 0 open", s, fails)
	}
	// The threshold is 3: failures 3, 4 and 5 are events.
	for n := uint32(3); n <= fails; n++ {
		rec, err := rd.Read()
		if err != nil {
			t.Fatal(err)
		}
		var ev socklb.BpfOutcomeEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			t.Fatalf("event of %d bytes: %v", len(rec.RawSample), err)
		}
		if ev.BackendId != uint32(deadID) || ev.Consecutive != n || ev.Kind != uint32(socklb.BpfSocklbEventKindSOCKLB_EV_FAILURES) {
			t.Errorf("event %+v, want backend %d with %d consecutive failures", ev, deadID, n)
		}
	}
	if rd.AvailableBytes() != 0 {
		t.Errorf("%d more bytes of events than the %d failures past the threshold", rd.AvailableBytes(), fails-2)
	}
}

// backendIDs maps each backend ("addr:port/PROTO") to its id.
func backendIDs(t *testing.T, d *datapath) map[string]maps.BackendID {
	t.Helper()
	bes, err := d.maps.Backends()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]maps.BackendID{}
	for id, b := range bes {
		out[b.String()] = id
	}
	return out
}

// TestPrivilegedBlackholedConnectsCountAsFailures: the backend drops SYNs
// (a listener that never accepts, its accept queue full: the kernel drops
// further SYNs, as for a hung server, and it needs no firewall tool, so it
// runs in the VMs too); a client that gives up after 1 s leaves the socket
// in SYN_SENT, and closing it counts as a failed connect.
func TestPrivilegedBlackholedConnectsCountAsFailures(t *testing.T) {
	d := newDatapath(t)
	blackhole(t, d.ns, netip.MustParseAddrPort("198.18.0.3:8080"))
	d.apply(t, service(vip, 80, lb.TCP, "198.18.0.3:8080"))
	id := backendIDs(t, d)["198.18.0.3:8080/TCP"]

	const tries = 3
	for range tries {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		c, err := d.ns.Dial(ctx, "tcp4", vip+":80")
		cancel()
		if err == nil {
			c.Close()
			t.Fatal("connected to a blackholed backend")
		}
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("connect: %v, want a timeout", err)
		}
	}
	var s maps.BackendStats
	await(t, "3 failed connects counted", func() bool {
		all, err := maps.NewStats(&d.dp.Maps).BackendStats()
		if err != nil {
			t.Fatal(err)
		}
		s = all[id]
		return s.Failed == tries
	})
	t.Logf("blackholed backend after %d timed-out connects: %+v", tries, s)
	if s.Open != 0 || s.Consecutive != tries || s.Established != 0 {
		t.Errorf("blackholed backend: %+v, want %d failed and consecutive, 0 open", s, tries)
	}
}

// TestPrivilegedLeastConnectionsPicksTheLessLoaded: backend A holds 10
// open connections (through another Service, the counts are per backend);
// a least-connections Service of A and B then sends every short connect to
// B, since with two backends both are compared each time.
func TestPrivilegedLeastConnectionsPicksTheLessLoaded(t *testing.T) {
	d := newDatapath(t)
	d.pod(t, "pod-a", "198.18.0.1", 8080)
	d.pod(t, "pod-b", "198.18.0.2", 8080)
	balanced := service(vip, 80, lb.TCP, "198.18.0.1:8080", "198.18.0.2:8080")
	balanced.Policy = lb.PolicyLeastConnections
	d.apply(t, service(other, 80, lb.TCP, "198.18.0.1:8080"), balanced)
	for range 10 {
		c, err := d.ns.Dial(t.Context(), "tcp4", other+":80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	got := map[string]int{}
	for range 50 {
		name, err := d.ask("tcp4", vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	t.Logf("50 connects with pod-a holding 10 open: %v", got)
	if got["pod-b"] != 50 {
		t.Errorf("least-connections sent %d of 50 connects to the loaded pod-a", got["pod-a"])
	}
}

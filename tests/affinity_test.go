package tests

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// TestPrivilegedSessionAffinityClientIP: with sessionAffinity ClientIP one
// client (a pod: a network namespace) keeps reaching one backend, distinct
// clients spread, and the affinity to a backend that leaves the service is
// dropped.
func TestPrivilegedSessionAffinityClientIP(t *testing.T) {
	d := newDatapath(t)
	pods := []string{"198.18.0.1:8080", "198.18.0.2:8080", "198.18.0.3:8080"}
	for i := range pods {
		d.pod(t, fmt.Sprintf("pod-%d", i+1), fmt.Sprintf("198.18.0.%d", i+1), 8080)
	}
	svc := service(vip, 80, lb.TCP, pods...)
	svc.AffinityTimeout = 3 * time.Hour
	d.apply(t, svc)

	// Clients are namespaces of their own, wired to the pods' namespace.
	const clients = 8
	var ns []*sandbox.Netns
	for i := range clients {
		c := sandbox.NewNetns(t)
		if err := sandbox.Wire(c, d.ns, netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), netip.MustParsePrefix("198.18.0.0/24")); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, c)
	}
	stuck := map[string]int{}
	for i, c := range ns {
		count := 10
		if i == 0 {
			count = 100
		}
		got := map[string]int{}
		for range count {
			name, err := testagent.Ask(c, "tcp4", vip+":80")
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			got[name]++
		}
		if len(got) != 1 {
			t.Fatalf("client %d spread %d connects over %v; affinity keeps one backend", i, count, got)
		}
		for name := range got {
			stuck[name]++
		}
	}
	t.Logf("%d clients (the first with 100 connects) stuck to: %v", clients, stuck)
	if len(stuck) < 2 {
		t.Errorf("all %d clients got the same backend: %v", clients, stuck)
	}

	// Client 0's backend leaves the service: its affinity goes with it,
	// and it moves to another backend and sticks there.
	first, err := testagent.Ask(ns[0], "tcp4", vip+":80")
	if err != nil {
		t.Fatal(err)
	}
	var idx int
	fmt.Sscanf(first, "pod-%d", &idx)
	var rest []string
	for i, p := range pods {
		if i != idx-1 {
			rest = append(rest, p)
		}
	}
	svc2 := service(vip, 80, lb.TCP, rest...)
	svc2.AffinityTimeout = svc.AffinityTimeout
	// Another service keeps the removed pod in the backend map, so only
	// the purge can stop client 0 from sticking to it.
	other := service(vip, 81, lb.TCP, pods[idx-1])
	d.apply(t, svc2, other)
	assertNoAffinityTo(t, d, netip.MustParseAddrPort(pods[idx-1]))
	got := map[string]int{}
	for range 20 {
		name, err := testagent.Ask(ns[0], "tcp4", vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	if got[first] != 0 || len(got) != 1 {
		t.Errorf("after %s left: client 0 reached %v, want one other backend", first, got)
	}
}

// assertNoAffinityTo fails if any affinity entry points at backend b.
func assertNoAffinityTo(t *testing.T, d *datapath, b netip.AddrPort) {
	t.Helper()
	bes, err := d.maps.Backends()
	if err != nil {
		t.Fatal(err)
	}
	var (
		k socklb.BpfAffinityKey
		v socklb.BpfAffinityValue
	)
	it := d.dp.Maps.SocklbAffV3.Iterate()
	for it.Next(&k, &v) {
		be := bes[backendID(v.BackendId)]
		if be.Addr == b.Addr() && be.Port == b.Port() {
			t.Errorf("affinity entry of client %#x still points at %s, which left the service", k.NetnsCookie, b)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
}

func backendID(id uint32) maps.BackendID { return maps.BackendID(id) }

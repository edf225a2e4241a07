package reconciler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// checkVIPs returns an error when the fake's cluster IP map holds an
// address that no published ClusterIP frontend has: a connect to any port
// of it would be refused for nothing. OnWrite runs it after every write.
func checkVIPs(f *maps.Fake) error {
	vips, err := f.VIPs()
	if err != nil {
		return err
	}
	svcs, err := f.Services()
	if err != nil {
		return err
	}
	has := map[netip.Addr]bool{}
	for _, s := range svcs {
		if isClusterIP(s.Flags) {
			has[s.Frontend.Addr] = true
		}
	}
	for _, a := range vips {
		if !has[a] {
			return fmt.Errorf("cluster IP %s is refused with no published ClusterIP frontend", a)
		}
	}
	return nil
}

func ofKind(s lb.Service, k lb.FrontendKind) lb.Service {
	s.Kind = k
	return s
}

func vipsOf(t *testing.T, f *maps.Fake) []netip.Addr {
	t.Helper()
	vips, err := f.VIPs()
	if err != nil {
		t.Fatal(err)
	}
	return vips
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// connectErr traces a connect to addr:port/TCP through the fake.
func connectErr(t *testing.T, f *maps.Fake, addr string, port uint16) (bool, error) {
	t.Helper()
	_, ok, err := f.Lookup(maps.Frontend{Addr: netip.MustParseAddr(addr), Port: port, Proto: maps.ProtoTCP}, 0)
	return ok, err
}

// TestClusterIPsFollowPublishedClusterIPFrontends: the cluster IP map
// holds the addresses of the published ClusterIP frontends, never those of
// NodePort, externalIP or load-balancer frontends, at every write.
func TestClusterIPsFollowPublishedClusterIPFrontends(t *testing.T) {
	f := maps.NewFake()
	f.OnWrite(func() {
		if err := checkVIPs(f); err != nil {
			t.Fatal(err)
		}
	})
	r := New(f, nil)
	web := svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.1:8080")
	dnsUDP := svc("198.19.0.10", 53, lb.UDP, "web", "198.18.0.1:53")
	v6 := svc("fd00::10", 80, lb.TCP, "web", "[fd00::1]:8080")
	all := state(
		web, dnsUDP, v6,
		ofKind(svc("192.0.2.1", 30080, lb.TCP, "web", "198.18.0.1:8080"), lb.KindNodePort),
		ofKind(svc("203.0.113.5", 80, lb.TCP, "web", "198.18.0.1:8080"), lb.KindExternalIP),
		ofKind(svc("203.0.113.6", 80, lb.TCP, "web", "198.18.0.1:8080"), lb.KindLoadBalancer),
	)
	st, err := r.Apply(all)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := vipsOf(t, f), addrs("198.19.0.10", "fd00::10"); !slices.Equal(got, want) || st.VIPs != 2 || st.VIPsAdded != 2 {
		t.Fatalf("cluster IPs %v (stats %+v), want %v, each added once", got, st, want)
	}
	assertResolves(t, f, all)
	for _, c := range []struct {
		addr    string
		port    uint16
		refused bool
	}{
		{"198.19.0.10", 81, true}, {"198.19.0.10", 53, true}, // 53 is UDP only
		{"fd00::10", 443, true},
		{"192.0.2.1", 30081, false}, {"203.0.113.5", 81, false}, {"203.0.113.6", 81, false},
		{"198.19.0.11", 80, false},
	} {
		ok, err := connectErr(t, f, c.addr, c.port)
		if ok || errors.Is(err, maps.ErrUnknownPort) != c.refused || (!c.refused && err != nil) {
			t.Errorf("connect to %s:%d: ok=%v %v; refused should be %v", c.addr, c.port, ok, err, c.refused)
		}
	}

	// A port goes, the address stays; the last ClusterIP frontend of an
	// address goes, so does the address.
	st, err = r.Apply(state(web, all.Services[3], all.Services[4], all.Services[5]))
	if err != nil {
		t.Fatal(err)
	}
	if got := vipsOf(t, f); !slices.Equal(got, addrs("198.19.0.10")) || st.VIPsDeleted != 1 {
		t.Errorf("after the IPv6 frontend and a port went: %v (stats %+v)", got, st)
	}
	if _, err := connectErr(t, f, "198.19.0.10", 53); !errors.Is(err, maps.ErrUnknownPort) {
		t.Errorf("connect to the port that went: %v, want it refused (the address has others)", err)
	}
	if _, err := r.Apply(state()); err != nil {
		t.Fatal(err)
	}
	if got := vipsOf(t, f); len(got) != 0 {
		t.Errorf("after every Service went: cluster IPs %v", got)
	}
	if ok, err := connectErr(t, f, "198.19.0.10", 81); ok || err != nil {
		t.Errorf("a deleted Service's address: ok=%v %v; want it left alone", ok, err)
	}
}

// TestClusterIPsAreRestoredAndRepaired: a restarted agent keeps the
// addresses it finds, adds those an older agent (or an interrupted sync)
// did not write, deletes strays, and a reconciliation counts and repairs
// what someone changed by hand.
func TestClusterIPsAreRestoredAndRepaired(t *testing.T) {
	f := maps.NewFake()
	want := state(svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.1:8080"), svc("198.19.0.20", 80, lb.TCP, "db", "198.18.0.2:5432"))
	if _, err := New(f, nil).Apply(want); err != nil {
		t.Fatal(err)
	}
	if st, err := New(f, nil).Apply(want); err != nil || st.VIPsAdded+st.VIPsDeleted != 0 {
		t.Fatalf("a restart over the same maps: %+v, %v; want no write", st, err)
	}

	// Maps of an agent that had no cluster IP map, and a stray address.
	for _, a := range addrs("198.19.0.10", "198.19.0.20") {
		if err := f.DeleteVIP(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.AddVIP(netip.MustParseAddr("198.19.0.99")); err != nil {
		t.Fatal(err)
	}
	r := New(f, nil)
	st, err := r.Apply(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := vipsOf(t, f); !slices.Equal(got, addrs("198.19.0.10", "198.19.0.20")) || st.VIPsAdded != 2 || st.VIPsDeleted != 1 {
		t.Fatalf("restored over an older agent's maps: %v (stats %+v)", got, st)
	}

	// By hand: one address deleted, one stray added.
	if err := f.DeleteVIP(netip.MustParseAddr("198.19.0.20")); err != nil {
		t.Fatal(err)
	}
	if err := f.AddVIP(netip.MustParseAddr("198.19.0.99")); err != nil {
		t.Fatal(err)
	}
	if st, err := r.Apply(want); err != nil || st.VIPsAdded+st.VIPsDeleted != 0 {
		t.Fatalf("an ordinary sync: %+v, %v; it trusts its bookkeeping", st, err)
	}
	r.Reconcile()
	st, err = r.Apply(want)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Drift; d.MissingVIPs != 1 || d.UnknownVIPs != 1 || d.Total() != 2 {
		t.Errorf("drift %+v, want one missing and one unknown cluster IP", d)
	}
	if c := st.Drift.Counts(); c["missing_cluster_ip"] != 1 || c["unknown_cluster_ip"] != 1 {
		t.Errorf("drift counts %v", c)
	}
	if got := vipsOf(t, f); !slices.Equal(got, addrs("198.19.0.10", "198.19.0.20")) {
		t.Errorf("after the reconciliation: %v", got)
	}
	r.Reconcile()
	if st, err := r.Apply(want); err != nil || st.Drift.Total() != 0 {
		t.Errorf("a reconciliation of intact maps: %+v, %v", st.Drift, err)
	}
}

// TestClusterIPLeftOutForRoomIsNotRefused: a frontend that does not fit
// must not make its address refuse the ports it has not got: a new
// Service that does not fit adds no address, and a served Service whose
// new port does not fit leaves the address's other ports alone until it
// fits.
func TestClusterIPLeftOutForRoomIsNotRefused(t *testing.T) {
	f := maps.NewFakeWithCapacity(maps.Capacity{Services: 8, Members: 8, Backends: 8, Counters: 8, Names: 8})
	f.OnWrite(func() {
		if err := checkVIPs(f); err != nil {
			t.Fatal(err)
		}
	})
	r := New(f, nil)
	web := svc("198.19.0.10", 80, lb.TCP, "web", "198.18.0.1:8080")
	// 2 entries, reserve 1; big needs 6 and a reserve of 5.
	big := svc("198.19.0.20", 80, lb.TCP, "big", "198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80", "198.18.0.5:80")
	st, err := r.Apply(state(web, big))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.OverCapacity) != 1 || !slices.Equal(vipsOf(t, f), addrs("198.19.0.10")) {
		t.Fatalf("over capacity %+v, cluster IPs %v; want big left out and only web's address", st.OverCapacity, vipsOf(t, f))
	}
	if ok, err := connectErr(t, f, "198.19.0.20", 81); ok || err != nil {
		t.Errorf("a Service left out for room: ok=%v %v; want its address left alone", ok, err)
	}

	// web grows a port that does not fit: its address goes out.
	webTLS := svc("198.19.0.10", 443, lb.TCP, "web", "198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80")
	if st, err = r.Apply(state(web, webTLS)); err != nil {
		t.Fatal(err)
	}
	if len(st.OverCapacity) != 1 || len(vipsOf(t, f)) != 0 {
		t.Fatalf("over capacity %+v, cluster IPs %v; want web:443 left out and no address", st.OverCapacity, vipsOf(t, f))
	}
	for _, port := range []uint16{81, 443} {
		if ok, err := connectErr(t, f, "198.19.0.10", port); ok || err != nil {
			t.Errorf("web at %d while a port of it is left out: ok=%v %v; want it left alone", port, ok, err)
		}
	}
	assertResolves(t, f, state(web))

	// The same again: still out, nothing written.
	if st, err = r.Apply(state(web, webTLS)); err != nil || st.VIPsAdded+st.VIPsDeleted != 0 || len(vipsOf(t, f)) != 0 {
		t.Fatalf("the same state again: %+v, %v, cluster IPs %v", st, err, vipsOf(t, f))
	}
	// The port shrinks and fits: published, then the address is back.
	webTLS.Backends = webTLS.Backends[:1]
	if st, err = r.Apply(state(web, webTLS)); err != nil {
		t.Fatal(err)
	}
	if len(st.OverCapacity) != 0 || !slices.Equal(vipsOf(t, f), addrs("198.19.0.10")) {
		t.Fatalf("over capacity %+v, cluster IPs %v; want all served and web's address", st.OverCapacity, vipsOf(t, f))
	}
	// A port left out that goes instead of fitting: the address comes
	// back without any write of a frontend.
	wide := svc("198.19.0.10", 8443, lb.TCP, "web", "198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80", "198.18.0.4:80")
	if st, err = r.Apply(state(web, webTLS, wide)); err != nil || len(st.OverCapacity) != 1 || len(vipsOf(t, f)) != 0 {
		t.Fatalf("web:8443 left out: %+v, %v, cluster IPs %v", st.OverCapacity, err, vipsOf(t, f))
	}
	if st, err = r.Apply(state(web, webTLS)); err != nil || st.Published+st.Deleted != 0 || st.VIPsAdded != 1 ||
		!slices.Equal(vipsOf(t, f), addrs("198.19.0.10")) {
		t.Fatalf("web:8443 removed while left out: %+v, %v, cluster IPs %v", st, err, vipsOf(t, f))
	}
}

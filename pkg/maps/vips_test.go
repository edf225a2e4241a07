package maps

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/socklb/socklb"
)

// TestVIPKeyIsTheServiceKeysAddress: the program looks the cluster IP map
// up with the service key's address field as it is, so both keys must
// hold the same 16 bytes, IPv4 mapped, for either family.
func TestVIPKeyIsTheServiceKeysAddress(t *testing.T) {
	for _, a := range []string{"198.19.0.10", "::ffff:198.19.0.10", "2001:2::10"} {
		addr := netip.MustParseAddr(a)
		fk, err := frontendKey(Frontend{Addr: addr, Port: 80, Proto: ProtoTCP}, 0)
		if err != nil {
			t.Fatal(err)
		}
		vk, err := vipKey(addr)
		if err != nil {
			t.Fatal(err)
		}
		if vk.Addr != fk.Addr {
			t.Errorf("%s: cluster IP key %v, service key address %v", a, vk.Addr, fk.Addr)
		}
		if got := beToAddr(vk.Addr); got != addr.Unmap() {
			t.Errorf("%s: round trip %s", a, got)
		}
	}
	for _, bad := range []netip.Addr{{}, netip.MustParseAddr("fe80::1%eth0")} {
		if err := NewFake().AddVIP(bad); !errors.Is(err, ErrUnsupported) {
			t.Errorf("AddVIP(%v): %v, want ErrUnsupported", bad, err)
		}
	}
}

// TestVIPRefusesOnlyPortsWithoutAFrontend traces connects and sends
// through the fake as the program would run them: a cluster IP at a port
// or protocol without a frontend is refused and counted, its frontends
// are served, and any other address is left alone.
func TestVIPRefusesOnlyPortsWithoutAFrontend(t *testing.T) {
	f := NewFake()
	if err := f.UpsertBackend(1, be1); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	v6 := netip.MustParseAddr("2001:2::10")
	for _, a := range []netip.Addr{vip.Addr, v6, vip.Addr} {
		if err := f.AddVIP(a); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := f.VIPs(); err != nil || !slices.Equal(got, []netip.Addr{vip.Addr, v6}) {
		t.Fatalf("VIPs() = %v, %v; want %s and %s once each", got, err, vip.Addr, v6)
	}

	if b, ok, err := f.Lookup(vip, 0); err != nil || !ok || b != be1 {
		t.Errorf("the frontend %s: %v %v %v; want %s", vip, b, ok, err, be1)
	}
	wrongPort := Frontend{Addr: vip.Addr, Port: 81, Proto: ProtoTCP}
	wrongProto := Frontend{Addr: vip.Addr, Port: 80, Proto: ProtoUDP}
	for _, fe := range []Frontend{wrongPort, wrongProto, {Addr: v6, Port: 80, Proto: ProtoTCP}} {
		if _, ok, err := f.Lookup(fe, 0); ok || !errors.Is(err, ErrUnknownPort) {
			t.Errorf("connect to %s: ok=%v %v; want ErrUnknownPort", fe, ok, err)
		}
	}
	var sock UDPSocket
	if _, ok, err := f.SendTo(&sock, Frontend{Addr: vip.Addr, Port: 81, Proto: ProtoUDP}, 0); ok || !errors.Is(err, ErrUnknownPort) {
		t.Errorf("send to %s:81/UDP: ok=%v %v; want ErrUnknownPort", vip.Addr, ok, err)
	}
	other := Frontend{Addr: netip.MustParseAddr("198.19.0.99"), Port: 81, Proto: ProtoTCP}
	if _, ok, err := f.Lookup(other, 0); ok || err != nil {
		t.Errorf("connect to %s, no cluster IP: ok=%v %v; want it left alone", other, ok, err)
	}

	// Adding an address that is there keeps its count.
	if err := f.AddVIP(vip.Addr); err != nil {
		t.Fatal(err)
	}
	got, err := f.VIPRefusals()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[netip.Addr]uint64{vip.Addr: 3, v6: 1}; !mapsEqual(got, want) {
		t.Errorf("VIPRefusals() = %v, want %v", got, want)
	}
	if n, ok, err := f.VIP(vip.Addr); err != nil || !ok || n != 3 {
		t.Errorf("VIP(%s) = %d, %v, %v; want 3 refusals", vip.Addr, n, ok, err)
	}
	if _, ok, err := f.VIP(other.Addr); err != nil || ok {
		t.Errorf("VIP(%s) = %v, %v; want not a cluster IP", other.Addr, ok, err)
	}
	if c, _ := f.Counters(1); c.Refused != 0 || c.Connects != 1 {
		t.Errorf("the frontend's counters %+v: its own refusals are for no backend only", c)
	}

	if err := f.DeleteVIP(vip.Addr); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteVIP(vip.Addr); err != nil {
		t.Errorf("deleting a missing cluster IP: %v", err)
	}
	if _, ok, err := f.Lookup(wrongPort, 0); ok || err != nil {
		t.Errorf("connect to %s after DeleteVIP: ok=%v %v; want it left alone", wrongPort, ok, err)
	}
	if got, _ := f.VIPs(); !slices.Equal(got, []netip.Addr{v6}) {
		t.Errorf("VIPs() after a delete = %v", got)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestVIPMapCapacity: the fake's cluster IP map is as full as its size,
// and by default as large as the counter map (an address has a frontend,
// a frontend a counter entry), half the service map.
func TestVIPMapCapacity(t *testing.T) {
	def, err := DefaultCapacity()
	if err != nil {
		t.Fatal(err)
	}
	if def.VIPs != def.Counters || def.VIPs != def.Services/2 {
		t.Errorf("compiled sizes %+v: want the cluster IP map as the counter map, half the service map", def)
	}
	f := NewFakeWithCapacity(Capacity{VIPs: 1})
	a, b := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2")
	if err := f.AddVIP(a); err != nil {
		t.Fatal(err)
	}
	if err := f.AddVIP(a); err != nil {
		t.Errorf("adding an address that is there, map full: %v (needs no room)", err)
	}
	if err := f.AddVIP(b); !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), socklb.BpfMapSocklbVipV3) {
		t.Errorf("a second address in a map of 1: %v, want ErrMapFull naming %s", err, socklb.BpfMapSocklbVipV3)
	}
	f.FailWrites(func(w Write) error {
		if w.Map == socklb.BpfMapSocklbVipV3 && w.Delete {
			return ErrNoMemory
		}
		return nil
	})
	if err := f.DeleteVIP(a); !errors.Is(err, ErrNoMemory) {
		t.Errorf("a failed delete: %v, want the map's error", err)
	}
}

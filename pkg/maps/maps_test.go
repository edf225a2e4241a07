package maps

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/socklb/socklb"
)

var (
	vip = Frontend{Addr: netip.MustParseAddr("198.19.0.10"), Port: 80, Proto: ProtoTCP}
	be1 = Backend{Addr: netip.MustParseAddr("198.18.0.1"), Port: 8080, Proto: ProtoTCP}
	be2 = Backend{Addr: netip.MustParseAddr("198.18.0.2"), Port: 8080, Proto: ProtoTCP}
	be3 = Backend{Addr: netip.MustParseAddr("198.18.0.3"), Port: 8081, Proto: ProtoTCP}
)

func TestByteOrderMatchesNetworkOrder(t *testing.T) {
	k, err := frontendKey(vip, 0)
	if err != nil {
		t.Fatal(err)
	}
	// In memory the C struct holds the address bytes in network order,
	// IPv4 as ::ffff:a.b.c.d.
	var raw [16]byte
	for i, w := range k.Addr {
		raw[4*i], raw[4*i+1], raw[4*i+2], raw[4*i+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
	}
	if want := netip.MustParseAddr("::ffff:198.19.0.10").As16(); raw != want {
		t.Errorf("vip bytes = %v, want %v", raw, want)
	}
	if p := k.Port; [2]byte{byte(p), byte(p >> 8)} != [2]byte{0, 80} {
		t.Errorf("port bytes = %v, want [0 80]", [2]byte{byte(p), byte(p >> 8)})
	}
	if got := keyFrontend(k); got != vip {
		t.Errorf("round trip = %v, want %v", got, vip)
	}
	v6 := Frontend{Addr: netip.MustParseAddr("2001:2::10"), Port: 443, Proto: ProtoTCP}
	k6, err := frontendKey(v6, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keyFrontend(k6); got != v6 {
		t.Errorf("IPv6 round trip = %v, want %v", got, v6)
	}
}

func mustPublish(t *testing.T, m Maps, s Service) {
	t.Helper()
	if err := m.PublishService(s); err != nil {
		t.Fatal(err)
	}
}

func backendsOf(t *testing.T, f *Fake, fe Frontend) []Backend {
	t.Helper()
	svcs, err := f.Services()
	if err != nil {
		t.Fatal(err)
	}
	bes, _ := f.Backends()
	for _, s := range svcs {
		if s.Frontend == fe {
			var out []Backend
			for _, id := range s.Backends {
				out = append(out, bes[id])
			}
			return out
		}
	}
	t.Fatalf("%s not published", fe)
	return nil
}

func TestPublishNeverShowsAMixedOrBrokenSet(t *testing.T) {
	f := NewFake()
	for i, b := range []Backend{be1, be2, be3} {
		if err := f.UpsertBackend(BackendID(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	sets := [][]BackendID{{1, 2}, {3}, {1, 2, 3}, {}, {2}}
	// After every element write, a reader sees exactly one whole set.
	prev := []BackendID(nil)
	for _, set := range sets {
		f.OnWrite(func() {
			if err := f.CheckConsistent(); err != nil {
				t.Fatalf("inconsistent intermediate state: %v", err)
			}
			svcs, _ := f.Services()
			if len(svcs) == 1 {
				got := svcs[0].Backends
				if !equalIDs(got, prev) && !equalIDs(got, set) {
					t.Fatalf("reader saw %v, neither old %v nor new %v", got, prev, set)
				}
			}
		})
		mustPublish(t, f, Service{Frontend: vip, RevNATID: 7, Name: "ns/web:http", Backends: set})
		f.OnWrite(nil)
		prev = set
		svcs, _ := f.Services()
		if !equalIDs(svcs[0].Backends, set) {
			t.Fatalf("published %v, maps hold %v", set, svcs[0].Backends)
		}
		if n, _ := f.Prune(); n != 0 {
			t.Errorf("publish left %d stale slots", n)
		}
	}
}

func equalIDs(a, b []BackendID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLookupAndCounters(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	_ = f.UpsertBackend(2, be2)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 3, Name: "ns/web", Backends: []BackendID{1, 2}})
	empty := Frontend{Addr: netip.MustParseAddr("198.19.0.11"), Port: 53, Proto: ProtoUDP}
	mustPublish(t, f, Service{Frontend: empty, RevNATID: 4, Name: "ns/empty"})

	seen := map[Backend]int{}
	for n := range uint32(10) {
		b, ok, err := f.Lookup(vip, n)
		if err != nil || !ok {
			t.Fatalf("lookup: %v %v", ok, err)
		}
		seen[b]++
	}
	if seen[be1] != 5 || seen[be2] != 5 {
		t.Errorf("slots not used evenly: %v", seen)
	}
	if _, ok, err := f.Lookup(empty, 0); !ok || !errors.Is(err, ErrNoBackend) {
		t.Errorf("empty service: ok=%v err=%v, want refused", ok, err)
	}
	other := Frontend{Addr: netip.MustParseAddr("198.19.0.99"), Port: 80, Proto: ProtoTCP}
	if _, ok, _ := f.Lookup(other, 0); ok {
		t.Error("an address that is not a service was resolved")
	}
	if c, _ := f.Counters(3); c.Connects != 10 {
		t.Errorf("connects = %d, want 10", c.Connects)
	}
	if c, _ := f.Counters(4); c.Refused != 1 {
		t.Errorf("refused = %d, want 1", c.Refused)
	}
	svcs, _ := f.Services()
	if svcs[0].Name != "ns/web" || svcs[1].Name != "ns/empty" {
		t.Errorf("names = %q %q", svcs[0].Name, svcs[1].Name)
	}
}

func TestDeleteServiceRemovesEverything(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	if err := f.DeleteService(vip); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteService(vip); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if svc, _ := f.Len(); svc != 0 {
		t.Errorf("%d service map entries left", svc)
	}
	if _, ok := f.cnt[1]; ok {
		t.Error("counters left behind")
	}
	if err := f.DeleteBackend(1); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteBackend(1); err != nil {
		t.Fatalf("deleting a missing backend: %v", err)
	}
}

func TestPruneRemovesOrphanSlots(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	k, _ := frontendKey(vip, 0)
	// What an interrupted publish leaves: slots in the dead half, and
	// slots of a frontend whose entry was never written.
	k.Slot = slotHalf + 1
	f.svc[k] = socklb.BpfSvcValue{BackendId: 1}
	k2, _ := frontendKey(Frontend{Addr: vip.Addr, Port: 81, Proto: ProtoTCP}, 1)
	f.svc[k2] = socklb.BpfSvcValue{BackendId: 1}
	n, err := f.Prune()
	if err != nil || n != 2 {
		t.Fatalf("prune = %d, %v; want 2", n, err)
	}
	if got := backendsOf(t, f, vip); len(got) != 1 || got[0] != be1 {
		t.Errorf("live slots damaged: %v", got)
	}
}

func TestRejects(t *testing.T) {
	f := NewFake()
	zoned := Frontend{Addr: netip.MustParseAddr("fe80::1%lo"), Port: 80, Proto: ProtoTCP}
	if err := f.PublishService(Service{Frontend: zoned}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("zoned frontend: %v, want ErrUnsupported", err)
	}
	sctp := Frontend{Addr: vip.Addr, Port: 80, Proto: 132}
	if err := f.PublishService(Service{Frontend: sctp}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("SCTP frontend: %v, want ErrUnsupported", err)
	}
	big := make([]BackendID, MaxBackendsPerService+1)
	if err := f.PublishService(Service{Frontend: vip, Backends: big}); !errors.Is(err, ErrTooManyBackends) {
		t.Errorf("too many backends: %v", err)
	}
	if err := f.UpsertBackend(1, Backend{Port: 1}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("backend without an address: %v", err)
	}
}

func TestAffinityEntriesFollowTheBackendSet(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	_ = f.UpsertBackend(2, be2)
	aff := Service{Frontend: vip, RevNATID: 5, Flags: FlagAffinity, AffinityTimeout: 60, Backends: []BackendID{1, 2}}
	mustPublish(t, f, aff)
	f.SetAffinity(100, 5, 1)
	f.SetAffinity(200, 5, 2)
	f.SetAffinity(300, 6, 2) // another frontend: untouched

	aff.Backends = []BackendID{2}
	mustPublish(t, f, aff)
	if _, ok := f.Affinity(100, 5); ok {
		t.Error("client 100 still sticks to backend 1, which left the service")
	}
	if id, ok := f.Affinity(200, 5); !ok || id != 2 {
		t.Errorf("client 200 lost its affinity to backend 2, which stayed: %v %v", id, ok)
	}
	if err := f.DeleteService(vip); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Affinity(200, 5); ok {
		t.Error("affinity survived the deletion of its frontend")
	}
	if _, ok := f.Affinity(300, 6); !ok {
		t.Error("another frontend's affinity was dropped")
	}
}

func TestSlotsCarryACopyOfTheirBackend(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	_ = f.UpsertBackend(2, be2)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{2, 1}})
	k, _ := frontendKey(vip, 0)
	for i, want := range []struct {
		id BackendID
		b  Backend
	}{{2, be2}, {1, be1}} {
		k.Slot = f.svc[k].Base + uint16(i) + 1
		slot := f.svc[k]
		if BackendID(slot.BackendId) != want.id || toBackend(slot.Backend) != want.b {
			t.Errorf("slot %d = id %d, %s; want id %d, %s", k.Slot, slot.BackendId, toBackend(slot.Backend), want.id, want.b)
		}
	}
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}

	// Lookup reads the slot alone, as the program does: what the backend
	// map says does not matter to it, and CheckConsistent catches a copy
	// that disagrees.
	f.be[1] = socklb.BpfBackend{Addr: addrToBE(be3.Addr), Port: portToBE16(be3.Port), Proto: be3.Proto}
	if b, _, err := f.Lookup(vip, 1); err != nil || b != be1 {
		t.Errorf("lookup = %s, %v; want the slot's copy %s", b, err, be1)
	}
	if err := f.CheckConsistent(); err == nil {
		t.Error("a slot whose copy differs from its backend passed CheckConsistent")
	}
	delete(f.be, 1)
	if err := f.CheckConsistent(); err == nil {
		t.Error("a slot whose backend is gone passed CheckConsistent")
	}
}

func TestUpsertBackendNeverChangesALiveID(t *testing.T) {
	f := NewFake()
	if err := f.UpsertBackend(1, be1); err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertBackend(1, be1); err != nil {
		t.Errorf("writing the same backend again: %v", err)
	}
	if err := f.UpsertBackend(1, be2); !errors.Is(err, ErrBackendChanged) {
		t.Errorf("another backend for id 1: %v, want ErrBackendChanged", err)
	}
	// Without the cache (a restarted agent), the map itself says no.
	f.bes = nil
	if err := f.UpsertBackend(1, be2); !errors.Is(err, ErrBackendChanged) {
		t.Errorf("another backend for id 1, not cached: %v, want ErrBackendChanged", err)
	}
	if bes, _ := f.Backends(); bes[1] != be1 {
		t.Errorf("backend 1 = %s, want it unchanged: %s", bes[1], be1)
	}
	// A deleted id is free again.
	if err := f.DeleteBackend(1); err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertBackend(1, be2); err != nil {
		t.Errorf("reusing a deleted id: %v", err)
	}
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	if b, _, err := f.Lookup(vip, 0); err != nil || b != be2 {
		t.Errorf("lookup = %s, %v; want %s", b, err, be2)
	}
}

// countingTable counts the lookups that reach a table.
type countingTable[K comparable, V any] struct {
	table[K, V]
	lookups *int
}

func (c countingTable[K, V]) lookup(k K) (V, bool, error) {
	*c.lookups++
	return c.table.lookup(k)
}

func TestPublishReadsBackendsFromTheCache(t *testing.T) {
	f := NewFake()
	var lookups int
	f.store.be = countingTable[uint32, socklb.BpfBackend]{f.store.be, &lookups}
	for i, b := range []Backend{be1, be2, be3} {
		if err := f.UpsertBackend(BackendID(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 2, 3}})
	if lookups != 0 {
		t.Errorf("publishing backends this store wrote read the backend map %d times", lookups)
	}

	// A restarted agent: Backends (which Restore calls) fills the cache.
	f.bes = nil
	if _, err := f.Backends(); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{3, 2}})
	if lookups != 0 {
		t.Errorf("after Backends, a publish read the backend map %d times", lookups)
	}

	// Without it, each backend is read once.
	f.bes = nil
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 2}})
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{2, 1}})
	if lookups != 2 {
		t.Errorf("uncached backends were read %d times, want 2 (once each)", lookups)
	}
	if err := f.CheckConsistent(); err != nil {
		t.Fatal(err)
	}
}

func TestPublishRefusesAnUnknownBackend(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	err := f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 9}})
	if !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("publishing backend 9, which does not exist: %v, want ErrUnknownBackend", err)
	}
	// Nothing was written: the live set is untouched, no slot is left over.
	if got := backendsOf(t, f, vip); len(got) != 1 || got[0] != be1 {
		t.Errorf("live set after the refused publish: %v", got)
	}
	if svc, _ := f.Len(); svc != 2 {
		t.Errorf("%d service map entries, want 2 (entry and one slot)", svc)
	}
}

package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/socklb/socklb"
)

var udpA = Frontend{Addr: netip.MustParseAddr("198.19.0.10"), Port: 53, Proto: ProtoUDP}
var udpB = Frontend{Addr: netip.MustParseAddr("198.19.0.11"), Port: 53, Proto: ProtoUDP}

// checkMemberOrder fails when a member entry is missing while a slot of
// the same frontend, in either half, still holds its backend: a reader that
// took the old entry could still be sent there, and the member must stay
// until the old slots are gone. CheckConsistent covers the other side
// (the live set never lists a backend without its member).
func checkMemberOrder(t *testing.T, f *Fake) {
	t.Helper()
	if err := f.CheckConsistent(); err != nil {
		t.Fatalf("inconsistent intermediate state: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, e := range f.svc {
		if k.Slot != 0 {
			continue
		}
		for sk, slot := range f.svc {
			if sk.Slot == 0 || sk.Addr != k.Addr || sk.Port != k.Port || sk.Proto != k.Proto {
				continue
			}
			// An old slot belongs to the entry it was published under;
			// its frontend id is that of the entry (the tests below keep
			// one id per frontend unless they change it on purpose).
			if _, ok := f.memb[socklb.BpfSvcMember{RevNatId: e.RevNatId, BackendId: slot.BackendId}]; !ok {
				inLive := sk.Slot > e.Base && sk.Slot <= e.Base+e.Count
				if inLive {
					t.Fatalf("%s: live slot %d lists backend %d without a member entry", keyFrontend(k), sk.Slot, slot.BackendId)
				}
				t.Fatalf("%s: member of backend %d deleted while old slot %d still holds it", keyFrontend(k), slot.BackendId, sk.Slot)
			}
		}
	}
}

func TestPublishWritesMembersBeforeAndDeletesThemAfter(t *testing.T) {
	f := NewFake()
	for i, b := range []Backend{be1, be2, be3} {
		if err := f.UpsertBackend(BackendID(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	writes := 0
	f.OnWrite(func() { writes++; checkMemberOrder(t, f) })
	for _, set := range [][]BackendID{{1, 2}, {3}, {1, 2, 3}, {}, {2}, {2, 2, 1}, {1}} {
		mustPublish(t, f, Service{Frontend: vip, RevNATID: 7, Name: "ns/web:http", Backends: set})
		svcs, err := f.Services()
		if err != nil {
			t.Fatal(err)
		}
		if len(svcs[0].Damage) != 0 {
			t.Fatalf("after publishing %v: damage %q", set, svcs[0].Damage)
		}
		want := len(slices.Compact(slices.Sorted(slices.Values(set))))
		if got := f.Members(); got != want {
			t.Fatalf("after publishing %v: %d member entries, want %d", set, got, want)
		}
	}
	f.OnWrite(nil)
	if writes == 0 {
		t.Fatal("OnWrite never ran")
	}

	// A new frontend id: the old id's members go, the new id's come.
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 8, Backends: []BackendID{1, 3}})
	f.mu.Lock()
	got := slices.Collect(func(yield func(socklb.BpfSvcMember) bool) {
		for m := range f.memb {
			if !yield(m) {
				return
			}
		}
	})
	f.mu.Unlock()
	slices.SortFunc(got, func(a, b socklb.BpfSvcMember) int { return int(a.BackendId) - int(b.BackendId) })
	if want := []socklb.BpfSvcMember{{RevNatId: 8, BackendId: 1}, {RevNatId: 8, BackendId: 3}}; !slices.Equal(got, want) {
		t.Errorf("members after the id changed: %v, want %v", got, want)
	}

	f.OnWrite(func() { checkMemberOrder(t, f) })
	if err := f.DeleteService(vip); err != nil {
		t.Fatal(err)
	}
	f.OnWrite(nil)
	if n := f.Members(); n != 0 {
		t.Errorf("%d member entries left after DeleteService", n)
	}
}

func TestPublishTakesBackMembersWhenItFails(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	_ = f.UpsertBackend(2, be2)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	// The entry is the third service map write of this publish, after
	// two slots.
	svcWrites := 0
	f.FailWrites(func(w Write) error {
		if w.Map == socklb.BpfMapSocklbSvcV3 && !w.Delete {
			if svcWrites++; svcWrites == 3 {
				return ErrNoMemory
			}
		}
		return nil
	})
	err := f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 2}})
	f.FailWrites(nil)
	if !errors.Is(err, ErrNoMemory) {
		t.Fatalf("publish with a failing entry write: %v, want ErrNoMemory", err)
	}
	if n := f.Members(); n != 1 {
		t.Errorf("%d member entries after the failed publish, want 1: the one of the live set", n)
	}
	if err := f.CheckConsistent(); err != nil {
		t.Error(err)
	}
}

func TestMapErrorsNameTheMapAndWrapSentinels(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		// How cilium/ebpf words a full hash map's update.
		{fmt.Errorf("update: %w", fmt.Errorf("key too big for map: %w", errE2BIG)), ErrMapFull},
		{errENOSPC, ErrMapFull},
		{errENOMEM, ErrNoMemory},
		{errors.New("something else"), nil},
	} {
		err := mapError("socklb_memb_v3", tc.err)
		if !strings.Contains(err.Error(), "socklb_memb_v3") {
			t.Errorf("%v: the text does not name the map", err)
		}
		for _, s := range []error{ErrMapFull, ErrNoMemory} {
			if errors.Is(err, s) != (s == tc.want) {
				t.Errorf("%v: errors.Is(%v) = %v", err, s, errors.Is(err, s))
			}
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%v no longer wraps the original error", err)
		}
	}
	if mapError("x", nil) != nil {
		t.Error("mapError(nil) is not nil")
	}

	// Through every Maps method that writes: the fake reports a failed
	// allocation as the kernel would.
	for _, op := range []struct {
		name string
		m    string
		run  func(f *Fake) error
	}{
		{"UpsertBackend", socklb.BpfMapSocklbBeV3, func(f *Fake) error { return f.UpsertBackend(9, be3) }},
		{"PublishService/slot", socklb.BpfMapSocklbSvcV3, func(f *Fake) error {
			return f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
		}},
		{"PublishService/member", socklb.BpfMapSocklbMembV3, func(f *Fake) error {
			return f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
		}},
		{"PublishService/counters", socklb.BpfMapSocklbCntV3, func(f *Fake) error {
			return f.PublishService(Service{Frontend: udpA, RevNATID: 2, Backends: []BackendID{1}})
		}},
		{"PublishService/name", socklb.BpfMapSocklbNameV3, func(f *Fake) error {
			return f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
		}},
		{"DeleteService", socklb.BpfMapSocklbSvcV3, func(f *Fake) error { return f.DeleteService(udpB) }},
		{"DeleteBackend", socklb.BpfMapSocklbBeV3, func(f *Fake) error { return f.DeleteBackend(1) }},
		{"Prune", socklb.BpfMapSocklbMembV3, func(f *Fake) error {
			f.memb[socklb.BpfSvcMember{RevNatId: 99, BackendId: 1}] = 1
			_, err := f.Prune()
			return err
		}},
	} {
		t.Run(op.name, func(t *testing.T) {
			f := NewFake()
			_ = f.UpsertBackend(1, be1)
			mustPublish(t, f, Service{Frontend: udpB, RevNATID: 5, Backends: []BackendID{1}})
			f.FailWrites(func(w Write) error {
				if w.Map == op.m {
					return errENOMEM
				}
				return nil
			})
			err := op.run(f)
			if !errors.Is(err, ErrNoMemory) || !strings.Contains(err.Error(), op.m) {
				t.Errorf("%s with ENOMEM on %s: %v; want ErrNoMemory naming the map", op.name, op.m, err)
			}
		})
	}
}

func TestFakeEnforcesCapacity(t *testing.T) {
	f := NewFakeWithCapacity(Capacity{Services: 5, Backends: 2, Members: 3, Counters: 2, Names: 2, VIPs: 2})
	def, err := DefaultCapacity()
	if err != nil {
		t.Fatal(err)
	}
	if c := f.Capacity(); c != (Capacity{Services: 5, Backends: 2, Members: 3, Counters: 2, Names: 2, VIPs: 2}) {
		t.Errorf("Capacity() = %+v", c)
	}
	if c := NewFake().Capacity(); c != def || c.Services != 524288 || c.Members != 524288 {
		t.Errorf("NewFake().Capacity() = %+v, want the objects' %+v", c, def)
	}

	for i, b := range []Backend{be1, be2} {
		if err := f.UpsertBackend(BackendID(i+1), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.UpsertBackend(1, be1); err != nil {
		t.Errorf("writing an existing backend into a full map: %v (replacing needs no room)", err)
	}
	if err := f.UpsertBackend(3, be3); !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), socklb.BpfMapSocklbBeV3) {
		t.Errorf("a third backend in a map of 2: %v, want ErrMapFull naming %s", err, socklb.BpfMapSocklbBeV3)
	}

	// Entry + 2 slots = 3 of 5; republishing needs 2 more slots in the
	// other half before the old ones go: 5 of 5.
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 2}})
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{2, 1}})
	// A second frontend with one backend: entry + slot = 5 of 5.
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 2, Backends: []BackendID{1}})
	// Now a republish of vip needs 2 slots that are not there.
	err = f.PublishService(Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1, 2}})
	if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), socklb.BpfMapSocklbSvcV3) {
		t.Errorf("publish into a full service map: %v, want ErrMapFull naming %s", err, socklb.BpfMapSocklbSvcV3)
	}
	if err := f.CheckConsistent(); err != nil {
		t.Errorf("after the failed publish: %v", err)
	}
	if got := backendsOf(t, f, vip); !slices.Equal(got, []Backend{be2, be1}) {
		t.Errorf("live set after the failed publish: %v", got)
	}
	// Members: vip has 2, udpA 1 = 3 of 3; a third frontend fails on
	// its member entry (the service map is full first: free it).
	if err := f.DeleteService(udpA); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Prune(); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 2, Backends: []BackendID{2}})
	err = f.PublishService(Service{Frontend: udpA, RevNATID: 2, Backends: []BackendID{2, 1}})
	if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), socklb.BpfMapSocklbMembV3) {
		t.Errorf("publish with a full member map: %v, want ErrMapFull naming %s", err, socklb.BpfMapSocklbMembV3)
	}
	if n := f.Members(); n != 3 {
		t.Errorf("%d members after the failed publish, want 3", n)
	}
	if _, err := f.Prune(); err != nil {
		t.Fatal(err)
	}
	// Counters and names: 2 frontends of 2.
	if err := f.DeleteService(udpA); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 2})
	err = f.PublishService(Service{Frontend: udpB, RevNATID: 3})
	if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), socklb.BpfMapSocklbCntV3) {
		t.Errorf("a third frontend with counters for 2: %v, want ErrMapFull naming %s", err, socklb.BpfMapSocklbCntV3)
	}
}

func TestServicesReportsDamageAndReturnsEveryFrontend(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(f *Fake, entry socklb.BpfSvcKey, e socklb.BpfSvcValue)
		want   string
	}{
		{"slot missing", func(f *Fake, k socklb.BpfSvcKey, e socklb.BpfSvcValue) {
			k.Slot = e.Base + 2
			delete(f.svc, k)
		}, "live slot 2 is missing"},
		{"copy differs", func(f *Fake, _ socklb.BpfSvcKey, _ socklb.BpfSvcValue) {
			f.be[1] = socklb.BpfBackend{Addr: addrToBE(be3.Addr), Port: portToBE16(be3.Port), Proto: be3.Proto}
		}, "its copy of backend 1 is 198.18.0.1:8080/TCP, the backend map holds 198.18.0.3:8081/TCP"},
		{"backend missing", func(f *Fake, _ socklb.BpfSvcKey, _ socklb.BpfSvcValue) {
			delete(f.be, 2)
		}, "backend 2 is not in the backend map"},
		{"member missing", func(f *Fake, _ socklb.BpfSvcKey, e socklb.BpfSvcValue) {
			delete(f.memb, socklb.BpfSvcMember{RevNatId: e.RevNatId, BackendId: 2})
		}, "backend 2 has no member entry"},
		{"stray member", func(f *Fake, _ socklb.BpfSvcKey, e socklb.BpfSvcValue) {
			f.memb[socklb.BpfSvcMember{RevNatId: e.RevNatId, BackendId: 3}] = 1
		}, "member entries for backends [3], which the live set does not list"},
		{"name missing", func(f *Fake, _ socklb.BpfSvcKey, e socklb.BpfSvcValue) {
			delete(f.names, e.RevNatId)
		}, "name entry 1 is missing"},
		{"counters missing", func(f *Fake, _ socklb.BpfSvcKey, e socklb.BpfSvcValue) {
			delete(f.cnt, e.RevNatId)
		}, "counter entry 1 is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			for i, b := range []Backend{be1, be2, be3} {
				_ = f.UpsertBackend(BackendID(i+1), b)
			}
			mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Name: "ns/web", Backends: []BackendID{1, 2}})
			mustPublish(t, f, Service{Frontend: udpA, RevNATID: 2, Name: "ns/dns", Backends: []BackendID{3}})
			k, _ := frontendKey(vip, 0)
			tc.damage(f, k, f.svc[k])

			svcs, err := f.Services()
			if err != nil {
				t.Fatalf("Services failed whole: %v", err)
			}
			if len(svcs) != 2 {
				t.Fatalf("Services returned %d frontends, want 2", len(svcs))
			}
			for _, s := range svcs {
				switch s.Frontend {
				case vip:
					if len(s.Damage) != 1 || !strings.Contains(s.Damage[0], tc.want) {
						t.Errorf("damage of %s = %q, want one line with %q", s.Frontend, s.Damage, tc.want)
					}
					if s.Name != "ns/web" && tc.name != "name missing" {
						t.Errorf("name = %q", s.Name)
					}
				case udpA:
					if len(s.Damage) != 0 {
						t.Errorf("the whole frontend %s is reported damaged: %q", s.Frontend, s.Damage)
					}
				}
			}
		})
	}
}

func TestServicesReadsEachMapOnce(t *testing.T) {
	f := NewFake()
	for i, b := range []Backend{be1, be2, be3} {
		_ = f.UpsertBackend(BackendID(i+1), b)
	}
	for i := range 20 {
		fe := Frontend{Addr: vip.Addr, Port: uint16(1000 + i), Proto: ProtoTCP}
		mustPublish(t, f, Service{Frontend: fe, RevNATID: RevNATID(i + 1), Backends: []BackendID{1, 2, 3}})
	}
	var lookups int
	f.store.svc = countingTable[socklb.BpfSvcKey, socklb.BpfSvcValue]{f.store.svc, &lookups}
	f.store.be = countingTable[uint32, socklb.BpfBackend]{f.store.be, &lookups}
	f.store.memb = countingTable[socklb.BpfSvcMember, uint8]{f.store.memb, &lookups}
	f.store.names = countingTable[uint32, socklb.BpfSvcName]{f.store.names, &lookups}
	svcs, err := f.Services()
	if err != nil || len(svcs) != 20 {
		t.Fatalf("Services: %d, %v", len(svcs), err)
	}
	if lookups != 0 {
		t.Errorf("Services made %d single-element lookups; it reads whole maps", lookups)
	}
}

func TestPruneRemovesStrayMembers(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	_ = f.UpsertBackend(2, be2)
	mustPublish(t, f, Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}})
	// Left by an interrupted delete (frontend 9 is not live) and by an
	// interrupted publish (backend 2 is not listed by frontend 1).
	f.memb[socklb.BpfSvcMember{RevNatId: 9, BackendId: 1}] = 1
	f.memb[socklb.BpfSvcMember{RevNatId: 1, BackendId: 2}] = 1
	n, err := f.Prune()
	if err != nil || n != 2 {
		t.Fatalf("prune = %d, %v; want 2", n, err)
	}
	if f.Members() != 1 {
		t.Errorf("%d members left, want 1", f.Members())
	}
	if err := f.CheckConsistent(); err != nil {
		t.Error(err)
	}
}

// TestSendToKeepsABackendOnlyWhileItsServiceListsIt is finding 1 on the
// fake: a backend shared by two frontends has one id.
func TestSendToKeepsABackendOnlyWhileItsServiceListsIt(t *testing.T) {
	f := NewFake()
	u1 := Backend{Addr: be1.Addr, Port: 5353, Proto: ProtoUDP}
	u2 := Backend{Addr: be2.Addr, Port: 5353, Proto: ProtoUDP}
	_ = f.UpsertBackend(1, u1)
	_ = f.UpsertBackend(2, u2)
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 1, Backends: []BackendID{1, 2}})
	mustPublish(t, f, Service{Frontend: udpB, RevNATID: 2, Backends: []BackendID{1}})

	var sock UDPSocket
	for n := range uint32(5) {
		// n would pick another slot each time; the socket stays.
		b, ok, err := f.SendTo(&sock, udpA, n)
		if err != nil || !ok || b != u1 {
			t.Fatalf("send %d: %s, %v, %v; want %s", n, b, ok, err, u1)
		}
	}
	if c, _ := f.Counters(1); c.Connects != 5 {
		t.Errorf("connects = %d, want 5: every send is counted", c.Connects)
	}
	// Backend 1 leaves A, stays in B.
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 1, Backends: []BackendID{2}})
	if b, _, err := f.SendTo(&sock, udpA, 0); err != nil || b != u2 {
		t.Errorf("after backend 1 left A: %s, %v; want %s", b, err, u2)
	}
	if id, _ := sock.Backend(); id != 2 {
		t.Errorf("socket remembers backend %d, want 2", id)
	}
	// A with no backends refuses; A deleted is not a service.
	mustPublish(t, f, Service{Frontend: udpA, RevNATID: 1})
	if _, ok, err := f.SendTo(&sock, udpA, 0); !ok || !errors.Is(err, ErrNoBackend) {
		t.Errorf("empty A: %v, %v; want refused", ok, err)
	}
	if err := f.DeleteService(udpA); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := f.SendTo(&sock, udpA, 0); ok || err != nil {
		t.Errorf("deleted A: ok=%v, %v; want untouched", ok, err)
	}
	// The socket's state is another frontend's: B picks for itself.
	if b, _, err := f.SendTo(&sock, udpB, 0); err != nil || b != u1 {
		t.Errorf("B: %s, %v", b, err)
	}
}

func TestFailNth(t *testing.T) {
	f := NewFake()
	_ = f.UpsertBackend(1, be1)
	faulty := NewFaulty(f, FailNth(OpPublishService, 2, ErrNoMemory))
	s := Service{Frontend: vip, RevNATID: 1, Backends: []BackendID{1}}
	for i, wantErr := range []bool{false, true, false} {
		err := faulty.PublishService(s)
		if (err != nil) != wantErr || (err != nil && !errors.Is(err, ErrNoMemory)) {
			t.Errorf("publish %d: %v", i+1, err)
		}
	}
	if faulty.Capacity() != f.Capacity() {
		t.Error("Faulty does not pass Capacity on")
	}
}

func TestConstantsComeFromTheObjects(t *testing.T) {
	if nameLen != len(socklb.BpfSvcName{}.Name) {
		t.Errorf("nameLen %d, svc_name holds %d", nameLen, len(socklb.BpfSvcName{}.Name))
	}
	if MaxBackendsPerService != int(slotHalf)-1 {
		t.Errorf("MaxBackendsPerService = %d, slotHalf = %d", MaxBackendsPerService, slotHalf)
	}
	spec, err := socklb.LoadBpf()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[socklb.BpfMapSocklbMembV3].KeySize; got != 8 {
		t.Errorf("member key size %d, want 8", got)
	}
}

package reconciler

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/socklb/socklb/pkg/maps"
)

// vipFrontend is one frontend of a cluster IP plan case, written
// "addr:port/proto kind service backends", e.g. "10.0.0.1:53/UDP cip a/dns 1 2"
// (kind: cip, nodeport or external).
type vipFrontend string

func (v vipFrontend) parse(t *testing.T) (maps.Frontend, uint16, string, []int) {
	t.Helper()
	f := strings.Fields(string(v))
	if len(f) < 3 {
		t.Fatalf("bad frontend %q", v)
	}
	addrPort, proto, _ := strings.Cut(f[0], "/")
	ap := netip.MustParseAddrPort(addrPort)
	fe := maps.Frontend{Addr: ap.Addr(), Port: ap.Port(), Proto: maps.ProtoTCP}
	if proto == "UDP" {
		fe.Proto = maps.ProtoUDP
	}
	var flags uint16
	switch f[1] {
	case "cip":
	case "nodeport":
		flags = maps.FlagNodePort
	case "external":
		flags = maps.FlagExternal
	default:
		t.Fatalf("bad kind in %q", v)
	}
	var backends []int
	for _, b := range f[3:] {
		n, err := strconv.Atoi(b)
		if err != nil {
			t.Fatalf("bad backend in %q", v)
		}
		backends = append(backends, n)
	}
	return fe, flags, f[2], backends
}

// vipPlanInput builds a plan's input as buildPlanInput does, with
// frontends of any port and kind; the cluster IP map holds vips (nil: the
// addresses of the served ClusterIP frontends, as the reconciler leaves
// them), and the plan checks check.
func vipPlanInput(t *testing.T, served, want []vipFrontend, gone []string, vips, check []string, limit usage) planInput {
	t.Helper()
	in := planInput{
		services: map[maps.Frontend]written{}, backends: map[maps.Backend]maps.BackendID{},
		ids: map[maps.BackendID]maps.Backend{}, refs: map[maps.BackendID]int{}, unused: map[maps.BackendID]bool{},
		served: map[string]int{}, limit: limit,
		vips: map[netip.Addr]bool{}, vipRefs: map[netip.Addr]int{}, vipCheck: map[netip.Addr]bool{},
	}
	for _, s := range served {
		fe, flags, service, backends := s.parse(t)
		w := written{name: service + ":", service: service, flags: flags}
		for _, b := range backends {
			id := maps.BackendID(b)
			in.backends[be(b)], in.ids[id] = id, be(b)
			in.refs[id]++
			w.backends = append(w.backends, id)
		}
		in.services[fe] = w
		in.served[service]++
		in.used.entries += 1 + len(backends)
		in.used.members += len(backends)
		in.used.frontends++
		in.reserve = max(in.reserve, len(backends))
		if isClusterIP(flags) {
			in.vipRefs[fe.Addr]++
			if vips == nil {
				in.vips[fe.Addr] = true
			}
		}
	}
	for _, a := range vips {
		in.vips[netip.MustParseAddr(a)] = true
	}
	for _, a := range check {
		in.vipCheck[netip.MustParseAddr(a)] = true
	}
	in.used.backends = len(in.ids)
	for _, s := range want {
		fe, flags, service, backends := s.parse(t)
		d := desiredService{fe: fe, service: service, name: service + ":", flags: flags}
		for _, b := range backends {
			d.backends = append(d.backends, be(b))
		}
		in.want = append(in.want, d)
	}
	for _, g := range gone {
		addrPort, proto, _ := strings.Cut(g, "/")
		ap := netip.MustParseAddrPort(addrPort)
		fe := maps.Frontend{Addr: ap.Addr(), Port: ap.Port(), Proto: maps.ProtoTCP}
		if proto == "UDP" {
			fe.Proto = maps.ProtoUDP
		}
		in.gone = append(in.gone, fe)
	}
	return in
}

// describe names a step with the frontend's port and protocol.
func describe(s step) string {
	switch s.kind {
	case stepDeleteFrontend:
		return "delete " + s.fe.String()
	case stepPublish:
		return "publish " + s.svc.fe.String()
	}
	return s.String()
}

// TestPlanClusterIPs: the cluster IP map's writes go where no connect to
// an address that has no published ClusterIP frontend is refused.
func TestPlanClusterIPs(t *testing.T) {
	unlimited := usage{1 << 30, 1 << 30, 1 << 30, 1 << 30}
	for _, tc := range []struct {
		name          string
		served, want  []vipFrontend
		gone          []string
		vips, check   []string
		limit         usage
		steps, remain string // remain: the cluster IP map after the plan
	}{{
		name:   "add: after the last publish of a new Service's ports at the address",
		want:   []vipFrontend{"10.0.0.1:80/TCP cip a/web 1", "10.0.0.1:443/TCP cip a/web 1"},
		limit:  unlimited,
		steps:  "add 1, publish 10.0.0.1:80/TCP, publish 10.0.0.1:443/TCP, vip+ 10.0.0.1",
		remain: "10.0.0.1",
	}, {
		name:   "remove: before the first delete when the plan leaves the address none",
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1", "10.0.0.1:443/TCP cip a/web 1"},
		gone:   []string{"10.0.0.1:80/TCP", "10.0.0.1:443/TCP"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.1, delete 10.0.0.1:80/TCP, delete 10.0.0.1:443/TCP, unref 1",
	}, {
		name:   "a port removed from a Service that keeps others: the address stays",
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1", "10.0.0.1:443/TCP cip a/web 1"},
		gone:   []string{"10.0.0.1:443/TCP"},
		limit:  unlimited,
		steps:  "delete 10.0.0.1:443/TCP",
		remain: "10.0.0.1",
	}, {
		name: "one address, TCP and UDP frontends of several ports: added once, after the last",
		want: []vipFrontend{
			"10.0.0.10:53/UDP cip kube-system/dns 1", "10.0.0.10:53/TCP cip kube-system/dns 1",
			"10.0.0.10:9153/TCP cip kube-system/dns 2",
		},
		limit:  unlimited,
		steps:  "add 1, publish 10.0.0.10:53/UDP, publish 10.0.0.10:53/TCP, add 2, publish 10.0.0.10:9153/TCP, vip+ 10.0.0.10",
		remain: "10.0.0.10",
	}, {
		name: "a port change: the address is out while the Service has no port",
		// Deletions come first: in between, the old and the new port are
		// left alone, not refused.
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.1:8080/TCP cip a/web 1"},
		gone:   []string{"10.0.0.1:80/TCP"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.1, delete 10.0.0.1:80/TCP, publish 10.0.0.1:8080/TCP, vip+ 10.0.0.1",
		remain: "10.0.0.1",
	}, {
		name:   "a cluster IP that goes to another Service: out between the two",
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/old 1"},
		want:   []vipFrontend{"10.0.0.1:443/TCP cip b/new 2"},
		gone:   []string{"10.0.0.1:80/TCP"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.1, delete 10.0.0.1:80/TCP, unref 1, add 2, publish 10.0.0.1:443/TCP, vip+ 10.0.0.1",
		remain: "10.0.0.1",
	}, {
		name: "NodePort, externalIP and load-balancer addresses never go in",
		want: []vipFrontend{
			"10.0.0.1:80/TCP cip a/web 1", "192.0.2.1:30080/TCP nodeport a/web 1",
			"127.0.0.1:30080/TCP nodeport a/web 1", "203.0.113.5:80/TCP external a/web 1",
		},
		limit:  unlimited,
		steps:  "add 1, publish 10.0.0.1:80/TCP, vip+ 10.0.0.1, publish 192.0.2.1:30080/TCP, publish 127.0.0.1:30080/TCP, publish 203.0.113.5:80/TCP",
		remain: "10.0.0.1",
	}, {
		name: "a frontend that turns into another kind leaves its address",
		// An external frontend took the cluster IP's key (two Services).
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.1:80/TCP external b/ext 1"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.1, publish 10.0.0.1:80/TCP",
	}, {
		name: "over capacity: a new Service left out does not make its address refuse",
		// a/big needs 2 entries + 2 reserve; 3 fit.
		want:  []vipFrontend{"10.0.0.2:80/TCP cip a/big 1 2"},
		limit: usage{entries: 3, members: 3, backends: 3, frontends: 3},
		steps: "",
	}, {
		name: "over capacity: a served Service's new port left out takes its address out",
		// Its served port is still served; its unknown ports are left
		// alone while one it has is not served.
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.1:443/TCP cip a/web 1 2 3"},
		limit:  usage{entries: 5, members: 5, backends: 5, frontends: 5},
		steps:  "vip- 10.0.0.1",
	}, {
		name: "over capacity, stale: a change that does not fit keeps the address",
		// The older version of the frontend stays published.
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.1:80/TCP cip a/web 1 2 3"},
		limit:  usage{entries: 3, members: 3, backends: 5, frontends: 5},
		steps:  "",
		remain: "10.0.0.1",
	}, {
		name:   "over capacity, blocked last time, fits now: published, then added",
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.1:443/TCP cip a/web 1"},
		vips:   []string{},
		check:  []string{"10.0.0.1"},
		limit:  unlimited,
		steps:  "publish 10.0.0.1:443/TCP, vip+ 10.0.0.1",
		remain: "10.0.0.1",
	}, {
		name:   "blocked last time, its blocking frontend gone since: added back",
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		vips:   []string{},
		check:  []string{"10.0.0.1"},
		limit:  unlimited,
		steps:  "vip+ 10.0.0.1",
		remain: "10.0.0.1",
	}, {
		name: "restored: a stray address goes first, a missing one comes last",
		// An agent stopped between a publish and its address, or an
		// older agent without the map; and an address left by hand.
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		want:   []vipFrontend{"10.0.0.3:80/TCP cip c/new 1"},
		vips:   []string{"10.0.0.9"},
		check:  []string{"10.0.0.1", "10.0.0.9"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.9, publish 10.0.0.3:80/TCP, vip+ 10.0.0.3, vip+ 10.0.0.1",
		remain: "10.0.0.1 10.0.0.3",
	}, {
		name: "without a check, an address the steps do not touch is not looked at",
		// What a sync costs stays proportional to what changed.
		served: []vipFrontend{"10.0.0.1:80/TCP cip a/web 1"},
		vips:   []string{},
		limit:  unlimited,
		steps:  "",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := vipPlanInput(t, tc.served, tc.want, tc.gone, tc.vips, tc.check, tc.limit)
			p := makePlan(in)
			var steps []string
			for _, s := range p.steps {
				steps = append(steps, describe(s))
			}
			if got := strings.Join(steps, ", "); got != tc.steps {
				t.Errorf("steps\n  %s\nwant\n  %s", got, tc.steps)
			}
			checkVIPInvariant(t, in, p)
			var remain []string
			for _, a := range vipsAfter(in, p) {
				remain = append(remain, a.String())
			}
			if got := strings.Join(remain, " "); got != tc.remain {
				t.Errorf("cluster IP map after the plan: %q, want %q", got, tc.remain)
			}
			again := makePlan(vipPlanInput(t, tc.served, tc.want, tc.gone, tc.vips, tc.check, tc.limit))
			if fmt.Sprint(again.steps) != fmt.Sprint(p.steps) {
				t.Error("the same input made another plan")
			}
		})
	}
}

// checkVIPInvariant replays p step by step: after every step, each
// address in the cluster IP map has a published ClusterIP frontend, and
// none that is blocked is there. A delete from the map only makes that
// truer, so the replay checks after the other steps.
func checkVIPInvariant(t *testing.T, in planInput, p plan) {
	t.Helper()
	vips := map[netip.Addr]bool{}
	for a := range in.vips {
		vips[a] = true
	}
	cip := map[maps.Frontend]bool{}
	for fe, w := range in.services {
		cip[fe] = isClusterIP(w.flags)
	}
	has := func(a netip.Addr) bool {
		for fe, is := range cip {
			if is && fe.Addr == a {
				return true
			}
		}
		return false
	}
	for i, s := range p.steps {
		switch s.kind {
		case stepAddVIP:
			vips[s.vip] = true
		case stepDeleteVIP:
			delete(vips, s.vip)
			continue
		case stepDeleteFrontend:
			delete(cip, s.fe)
		case stepPublish:
			cip[s.svc.fe] = isClusterIP(s.svc.flags)
		}
		for a := range vips {
			if !has(a) {
				t.Errorf("after step %d (%s): %s is refused with no published ClusterIP frontend", i, describe(s), a)
			}
			if p.blocked[a] {
				t.Errorf("after step %d (%s): %s is refused while a port it has is left out", i, describe(s), a)
			}
		}
	}
}

// vipsAfter is the cluster IP map after p, sorted.
func vipsAfter(in planInput, p plan) []netip.Addr {
	vips := map[netip.Addr]bool{}
	for a := range in.vips {
		vips[a] = true
	}
	for _, s := range p.steps {
		switch s.kind {
		case stepAddVIP:
			vips[s.vip] = true
		case stepDeleteVIP:
			delete(vips, s.vip)
		}
	}
	var out []netip.Addr
	for a := range vips {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

package reconciler

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/socklb/socklb/pkg/maps"
)

// fe, be and buildPlanInput write a plan's input compactly: frontends
// by VIP at port 80, backends by number (a served one's id is its number).
func fe(vip string) maps.Frontend {
	return maps.Frontend{Addr: netip.MustParseAddr(vip), Port: 80, Proto: maps.ProtoTCP}
}

func be(i int) maps.Backend {
	return maps.Backend{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Port: 80, Proto: maps.ProtoTCP}
}

type frontendSpec struct {
	vip, service string
	backends     []int // backend numbers; served ones use them as ids too
}

func buildPlanInput(served, want []frontendSpec, gone []string, limit usage) planInput {
	in := planInput{
		services: map[maps.Frontend]written{}, backends: map[maps.Backend]maps.BackendID{},
		ids: map[maps.BackendID]maps.Backend{}, refs: map[maps.BackendID]int{}, unused: map[maps.BackendID]bool{},
		served: map[string]int{}, limit: limit,
		vips: map[netip.Addr]bool{}, vipRefs: map[netip.Addr]int{}, vipCheck: map[netip.Addr]bool{},
	}
	for _, s := range served {
		w := written{name: s.service + ":", service: s.service}
		for _, b := range s.backends {
			id := maps.BackendID(b)
			in.backends[be(b)], in.ids[id] = id, be(b)
			in.refs[id]++
			w.backends = append(w.backends, id)
		}
		in.services[fe(s.vip)] = w
		in.served[s.service]++
		// The maps are as the reconciler leaves them: each cluster IP
		// of a served frontend is in the cluster IP map.
		in.vipRefs[fe(s.vip).Addr]++
		in.vips[fe(s.vip).Addr] = true
		in.used.entries += 1 + len(s.backends)
		in.used.members += len(s.backends)
		in.used.frontends++
		in.reserve = max(in.reserve, len(s.backends))
	}
	in.used.backends = len(in.ids)
	for _, s := range want {
		d := desiredService{fe: fe(s.vip), service: s.service, name: s.service + ":"}
		for _, b := range s.backends {
			d.backends = append(d.backends, be(b))
		}
		in.want = append(in.want, d)
	}
	for _, g := range gone {
		in.gone = append(in.gone, fe(g))
	}
	return in
}

func (s step) String() string {
	switch s.kind {
	case stepDeleteFrontend:
		return "delete " + s.fe.Addr.String()
	case stepAddBackend:
		return fmt.Sprintf("add %d", int(s.backend.Addr.As4()[2])<<8|int(s.backend.Addr.As4()[3]))
	case stepPublish:
		return fmt.Sprintf("publish %s/%d", s.svc.fe.Addr, len(s.svc.backends))
	case stepDeleteBackend:
		return fmt.Sprintf("unref %d", s.id)
	case stepAddVIP:
		return "vip+ " + s.vip.String()
	case stepDeleteVIP:
		return "vip- " + s.vip.String()
	}
	return "?"
}

func TestPlanTable(t *testing.T) {
	unlimited := usage{1 << 30, 1 << 30, 1 << 30, 1 << 30}
	for _, tc := range []struct {
		name   string
		served []frontendSpec
		want   []frontendSpec
		gone   []string
		limit  usage
		steps  string
		over   string
	}{{
		name:   "removals and unused backends go before anything is added",
		served: []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2}}, {"10.0.0.2", "a/two", []int{3}}},
		want:   []frontendSpec{{"10.0.0.3", "a/three", []int{4}}},
		gone:   []string{"10.0.0.1"},
		limit:  unlimited,
		steps:  "vip- 10.0.0.1, delete 10.0.0.1, unref 1, unref 2, add 4, publish 10.0.0.3/1, vip+ 10.0.0.3",
	}, {
		name: "a full map still takes a delete and a shrink",
		// 3+1 + 3+1 = 8 entries, reserve 3 → limit 11 is as full as it gets.
		served: []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2, 3}}, {"10.0.0.2", "a/two", []int{4, 5, 6}}},
		want:   []frontendSpec{{"10.0.0.2", "a/two", []int{4}}},
		gone:   []string{"10.0.0.1"},
		limit:  usage{entries: 11, members: 11, backends: 6, frontends: 2},
		steps:  "vip- 10.0.0.1, delete 10.0.0.1, unref 1, unref 2, unref 3, publish 10.0.0.2/1, unref 5, unref 6",
	}, {
		name:   "a same-size change fits in the reserve when nothing else does",
		served: []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2}}},
		want:   []frontendSpec{{"10.0.0.1", "a/one", []int{1, 3}}},
		limit:  usage{entries: 5, members: 5, backends: 3, frontends: 1},
		steps:  "add 3, publish 10.0.0.1/2, unref 2",
	}, {
		name:   "growth without room keeps the served version",
		served: []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2}}},
		want:   []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2, 3}}},
		limit:  usage{entries: 5, members: 5, backends: 3, frontends: 1},
		over:   "a/one: 10.0.0.1:80/TCP stale",
	}, {
		name:   "new frontends of served Services come first, then Services by name, each whole",
		served: []frontendSpec{{"10.0.0.9", "z/served", []int{1}}},
		want: []frontendSpec{
			{"10.0.0.1", "a/new", []int{2}}, {"10.0.0.2", "a/new", []int{3}},
			{"10.0.0.3", "z/served", []int{1}},
		},
		// served: 2 entries, reserve 1. z/served's new frontend: +2 → 4,
		// +1 reserve = 5. a/new needs +4 more: 8 + 1 > 8.
		limit: usage{entries: 8, members: 8, backends: 8, frontends: 8},
		steps: "publish 10.0.0.3/1, vip+ 10.0.0.3",
		over:  "a/new: 10.0.0.1:80/TCP, a/new: 10.0.0.2:80/TCP",
	}, {
		name:  "the backend map's size counts too",
		want:  []frontendSpec{{"10.0.0.1", "a/one", []int{1, 2}}, {"10.0.0.2", "b/two", []int{3, 4}}},
		limit: usage{entries: 100, members: 100, backends: 3, frontends: 100},
		steps: "add 1, add 2, publish 10.0.0.1/2, vip+ 10.0.0.1",
		over:  "b/two: 10.0.0.2:80/TCP",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := buildPlanInput(tc.served, tc.want, tc.gone, tc.limit)
			p := makePlan(in)
			var steps, over []string
			for _, s := range p.steps {
				steps = append(steps, s.String())
			}
			for _, o := range p.over {
				line := o.Service + ": " + o.Frontend.String()
				if o.Stale {
					line += " stale"
				}
				over = append(over, line)
			}
			if got := strings.Join(steps, ", "); got != tc.steps {
				t.Errorf("steps\n  %s\nwant\n  %s", got, tc.steps)
			}
			if got := strings.Join(over, ", "); got != tc.over {
				t.Errorf("over capacity\n  %s\nwant\n  %s", got, tc.over)
			}
			// Pure: the same input gives the same plan.
			if again := makePlan(buildPlanInput(tc.served, tc.want, tc.gone, tc.limit)); fmt.Sprint(again.steps) != fmt.Sprint(p.steps) {
				t.Error("the same input made another plan")
			}
		})
	}
}

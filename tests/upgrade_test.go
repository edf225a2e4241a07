package tests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
)

// The commits whose agents the upgrade test replaces, one per older map
// layout. The Makefile's test-deps target reads these lines to fetch their
// modules: keep the form `layoutVnCommit = "<full hash>"`.
const (
	// layoutV1Commit is the last commit with map layout v1 (maps
	// socklb_*_v1, 4-byte addresses, one connect4 program): the parent of
	// "Map layout v2". Its agent shares nothing with today's but the link
	// of connect4.
	layoutV1Commit = "716d225f188408114fc5749c53d76e74b603acdf"
	// layoutV2Commit has map layout v2 (maps socklb_*_v2, backend slots
	// that hold only a backend id), as every commit up to "Map layout v3"
	// does; after it only tests changed. Its agent pins a link for every
	// hook.
	layoutV2Commit = "4922c9c3e424ee3715a310edf094d1e204963da5"
	// layoutV3Commit has map layout v3 before the connect-outcome maps
	// (socklb_bestat_v3, socklb_events_v3, socklb_avoid_v3,
	// socklb_eject_v3), the sock_ops program and the cluster IP map
	// (socklb_vip_v3) joined it: the new agent reuses every map it had
	// and adds those.
	layoutV3Commit = "4d19f7ec0a37004e7e3bbe34685f20a532e39855"
)

// TestPrivilegedAgentUpgradeFromOlderMapLayouts replaces a running agent
// built at the last commit of each older map layout with the current one
// while clients connect to a Service: no connect fails, every one lands on
// a backend of the Service, the links are reused, and the old maps are
// gone afterwards. The new agent starts before its source has anything, as
// when the API server is unreachable: it must leave the old programs
// serving until it has filled its new maps.
func TestPrivilegedAgentUpgradeFromOlderMapLayouts(t *testing.T) {
	sandbox.RequirePrivileges(t)
	for _, from := range []struct {
		layout, commit string
		// flags the old agent needs besides today's common ones.
		flags []string
	}{
		{"v1", layoutV1Commit, nil},
		// v2 has a metrics endpoint, on by default.
		{"v2", layoutV2Commit, []string{"--metrics-addr="}},
		{"v3", layoutV3Commit, []string{"--metrics-addr="}},
	} {
		t.Run(from.layout, func(t *testing.T) {
			// A cold build cache makes this a full build of the old tree.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
			defer cancel()
			start := time.Now()
			oldBin, err := testagent.BuildAt(ctx, "..", from.commit, t.TempDir())
			if err != nil {
				t.Fatalf("this test needs the repository's history (a full clone): %v", err)
			}
			t.Logf("built the agent at %.12s in %s", from.commit, time.Since(start).Round(time.Millisecond))

			for _, tc := range []struct {
				name string
				stop syscall.Signal
			}{
				{"old agent stopped", syscall.SIGTERM},
				{"old agent killed", syscall.SIGKILL},
			} {
				t.Run(tc.name, func(t *testing.T) {
					testUpgrade(t, oldAgent{bin: oldBin, layout: from.layout, flags: from.flags}, tc.stop)
				})
			}
		})
	}
}

// oldAgent is an agent binary of an older map layout.
type oldAgent struct {
	bin    string
	layout string // "v1": its maps are named socklb_*_v1
	flags  []string
}

func testUpgrade(t *testing.T, from oldAgent, stop syscall.Signal) {
	oldSvcMap := "socklb_svc_" + from.layout
	newSvcMap := socklb.BpfMapSocklbSvcV3
	e := newAgentEnv(t, servicesYAML(1, 2, 3))
	e.pods(t, 3, 8080)
	args := append([]string{"run", "--services-file=" + e.servicesFile, "--min-sync-interval=10ms", "--health-addr="}, from.flags...)
	oldCmd := e.agentCmd(args...)
	oldCmd.Path, oldCmd.Args[0] = from.bin, from.bin
	old := testagent.Start(t, oldCmd, nil)
	old.WaitLog(t, "maps synced", awaitBound)
	if oldSvcMap == newSvcMap {
		// From v3 an agent on new maps attaches after its first sync:
		// the links are all there once it says so.
		old.WaitLog(t, "programs attached after the first sync filled the maps", awaitBound)
	}

	// From v3 the layout is the same: the new agent reuses the old maps
	// and adds the connect-outcome ones.
	sameLayout := oldSvcMap == newSvcMap
	pins := pinNames(t, e.bpffs)
	if !slices.Contains(pins, oldSvcMap) || (!sameLayout && slices.Contains(pins, newSvcMap)) ||
		slices.Contains(pins, socklb.BpfMapSocklbBestatV3) || slices.Contains(pins, socklb.BpfMapSocklbVipV3) {
		t.Fatalf("the old agent pinned %v; want the %s layout", pins, from.layout)
	}
	linksBefore := pinnedLinks(t, e.bpffs)
	oldService := pinnedMapID(t, filepath.Join(e.bpffs, oldSvcMap))

	// Each phase lasts until the event that ends it and perPhase connects
	// completed in it, not for a time.
	const perPhase = 100
	c := startClients(t, e, "old agent", "198.19.0.10:80", "pod-1", "pod-2", "pod-3")
	c.waitConnects(t, perPhase)
	c.phase("no agent")
	old.Kill(stop)
	c.waitConnects(t, perPhase)

	// The new agent's source has nothing yet: its file does not exist.
	c.phase("new agent waiting for its source")
	e.servicesFile = filepath.Join(t.TempDir(), "services.yaml")
	next := e.startAgent(t)
	next.WaitLog(t, "maps ready", awaitBound)
	// The hooks must not switch before the first sync. So that their not
	// having switched means something, the agent first shows that it got
	// past its start and is waiting: it finds no file, then refuses a
	// broken one (written after it looked), and perPhase connects complete
	// after that, answered by the old programs.
	next.WaitLog(t, "cannot read file; waiting for it", awaitBound)
	e.writeServices(t, "kind: Service\nmetadata: [broken\n")
	next.WaitLog(t, "nothing applied yet", awaitBound)
	c.waitConnects(t, perPhase)
	if got := pinnedLinks(t, e.bpffs); !maps.Equal(got, linksBefore) {
		t.Errorf("the hooks switched before the new maps were filled: links %v, before %v", got, linksBefore)
	}
	if pins := pinNames(t, e.bpffs); !slices.Contains(pins, oldSvcMap) || !slices.Contains(pins, newSvcMap) {
		t.Errorf("while waiting, pinned %v; want the %s maps serving and the new maps ready", pins, from.layout)
	}

	c.phase("new agent syncing")
	e.writeServices(t, servicesYAML(1, 2, 3))
	next.WaitLog(t, "maps synced", awaitBound)
	// Logged once every hook runs the new programs and the old pins
	// are gone.
	next.WaitLog(t, "programs attached after the first sync filled the maps", awaitBound)
	if pinnedLinks(t, e.bpffs)["link_sock4_connect"] == linksBefore["link_sock4_connect"] {
		t.Fatal("the new agent attached but did not switch connect4 to its program")
	}
	c.phase("new agent")
	c.waitConnects(t, perPhase)
	c.stop()

	c.check(t)

	// Every pin is of the current objects; the old maps are gone.
	spec, err := socklb.LoadBpf()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name, ps := range spec.Programs {
		if ps.AttachType != ebpf.AttachTraceIter {
			want = append(want, "link_"+name)
		}
	}
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName { // not .rodata
			want = append(want, name)
		}
	}
	slices.Sort(want)
	got := pinNames(t, e.bpffs)
	if !slices.Equal(got, want) {
		t.Errorf("pinned after the upgrade: %v\nwant exactly the current objects: %v", got, want)
	}
	for _, name := range got {
		if strings.HasPrefix(name, "socklb_") && !strings.HasSuffix(name, "_v3") {
			t.Errorf("map %s of another layout is still pinned", name)
		}
	}

	// Every link the old agent pinned is still there, now running a new
	// program; connect4's reads the new service map.
	linksAfter := pinnedLinks(t, e.bpffs)
	for name, before := range linksBefore {
		after, ok := linksAfter[name]
		switch {
		case !ok:
			t.Errorf("%s is gone after the upgrade", name)
		case after.link != before.link:
			t.Errorf("%s is link %d after the upgrade, was %d: not replaced in place", name, after.link, before.link)
		case after.prog == before.prog:
			t.Errorf("%s still runs program %d of the old agent", name, before.prog)
		}
	}
	newService := pinnedMapID(t, filepath.Join(e.bpffs, newSvcMap))
	ids := programMaps(t, linksAfter["link_sock4_connect"].prog)
	switch {
	case sameLayout:
		if newService != oldService || !slices.Contains(ids, oldService) {
			t.Errorf("connect4 reads maps %v, the service map is %d; want the old agent's %d reused", ids, newService, oldService)
		}
	case !slices.Contains(ids, newService) || slices.Contains(ids, oldService):
		t.Errorf("connect4 reads maps %v; want the new service map %d and not the %s one %d", ids, newService, from.layout, oldService)
	default:
		// Nothing holds the old maps any more; the kernel frees them
		// (after an RCU grace period).
		await(t, fmt.Sprintf("the %s service map %d to be freed", from.layout, oldService), func() bool {
			m, err := ebpf.NewMapFromID(oldService)
			if err == nil {
				m.Close()
			}
			return errors.Is(err, os.ErrNotExist)
		})
	}

	row := e.inspect(t)[webFE]
	if row.Service != "test/web:http" || len(row.Backends) != 3 || row.Connects == 0 {
		t.Errorf("inspect after the upgrade: %+v; want test/web:http with 3 backends and connects counted", row)
	}
	// The cluster IP map is new to every older layout: the new agent
	// filled it from the frontends, and its programs read it.
	if got := pinnedVIPs(t, e.bpffs); !slices.Equal(got, []string{"198.19.0.10", "198.19.0.20"}) {
		t.Errorf("cluster IP map after the upgrade: %v, want the two Services' addresses", got)
	}
	if _, err := e.ask("198.19.0.10:81"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after the upgrade, a connect to web's cluster IP at port 81: %v, want ECONNREFUSED", err)
	}
	logs := next.Logs()
	wantLogs := []string{
		"the programs attach after the first sync", "programs attached after the first sync filled the maps",
		"replaced_in_place=true", "unpinned a map of an older layout",
	}
	if sameLayout {
		wantLogs = wantLogs[:3]
	}
	for _, want := range wantLogs {
		if !strings.Contains(logs, want) {
			t.Errorf("the new agent did not log %q:\n%s", want, logs)
		}
	}
}

// clients connect to one address in a loop, counting per phase of the
// test what answered and what failed.
type clients struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	backends []string

	mu     sync.Mutex
	phases []*phaseCount // the last is the current one
}

type phaseCount struct {
	name     string
	total    int
	failures int
	firstErr error
	answers  map[string]int
}

// startClients starts two clients connecting to addr from the test's
// netns, counting under phase; every connect must be answered by one of
// backends.
func startClients(t *testing.T, e *agentEnv, phase, addr string, backends ...string) *clients {
	ctx, cancel := context.WithCancel(context.Background())
	c := &clients{cancel: cancel, backends: backends}
	t.Cleanup(c.stop)
	c.phase(phase)
	for range 2 {
		c.wg.Go(func() {
			for ctx.Err() == nil {
				name, err := e.ask(addr)
				c.mu.Lock()
				p := c.phases[len(c.phases)-1]
				p.total++
				if err != nil {
					p.failures++
					if p.firstErr == nil {
						p.firstErr = err
					}
				} else {
					p.answers[name]++
				}
				c.mu.Unlock()
			}
		})
	}
	return c
}

// waitConnects waits until n more connects completed in the current phase.
func (c *clients) waitConnects(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	p := c.phases[len(c.phases)-1]
	start := p.total
	c.mu.Unlock()
	await(t, fmt.Sprintf("%d connects in phase %q", n, p.name), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return p.total >= start+n
	})
}

// phase starts counting under a new name.
func (c *clients) phase(name string) {
	p := &phaseCount{name: name, answers: map[string]int{}}
	c.mu.Lock()
	c.phases = append(c.phases, p)
	c.mu.Unlock()
}

func (c *clients) stop() {
	c.cancel()
	c.wg.Wait()
}

// check wants, in every phase, no failed connect and only the expected
// backends answering; in every phase long enough to tell, each of them.
func (c *clients) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	for _, p := range c.phases {
		total += p.total
		t.Logf("%s: %d connects, %d failed, answers %v", p.name, p.total, p.failures, p.answers)
		if p.failures != 0 {
			t.Errorf("%s: %d of %d connects failed; first: %v", p.name, p.failures, p.total, p.firstErr)
		}
		for name := range p.answers {
			if !slices.Contains(c.backends, name) {
				t.Errorf("%s: %q answered, not a backend of the service %v", p.name, name, c.backends)
			}
		}
		// With random picks, 50 connects miss one of three backends
		// with a probability of 5e-9.
		if p.total >= 50 && len(p.answers) != len(c.backends) {
			t.Errorf("%s: only %v answered; want each of %v", p.name, p.answers, c.backends)
		}
	}
	t.Logf("%d connects in all", total)
}

func pinNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

type linkState struct {
	link link.ID
	prog ebpf.ProgramID
}

func (s linkState) String() string { return fmt.Sprintf("link %d/prog %d", s.link, s.prog) }

// pinnedLinks returns each pinned link's id and the program it runs.
func pinnedLinks(t *testing.T, dir string) map[string]linkState {
	t.Helper()
	links := map[string]linkState{}
	for _, name := range pinNames(t, dir) {
		if !strings.HasPrefix(name, "link_") {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		links[name] = linkState{info.ID, info.Program}
	}
	return links
}

func pinnedMapID(t *testing.T, pin string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("the kernel reports no map ids")
	}
	return id
}

func programMaps(t *testing.T, id ebpf.ProgramID) []ebpf.MapID {
	t.Helper()
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		t.Fatal("the kernel reports no map ids of programs")
	}
	return ids
}

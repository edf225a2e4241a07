package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
)

// agentBin is built once by TestMain.
var agentBin string

func TestMain(m *testing.M) { testagent.Main(m, "..", &agentBin) }

// agentEnv is what the agent processes of one test share: a private bpffs,
// a child cgroup the test process has joined, a netns with "pods", and the
// services file.
type agentEnv struct {
	ns           *sandbox.Netns
	cg           *sandbox.Cgroup
	bpffs        string
	servicesFile string
}

func newAgentEnv(t *testing.T, yaml string) *agentEnv {
	t.Helper()
	sandbox.RequirePrivileges(t)
	e := &agentEnv{ns: sandbox.NewNetns(t), cg: sandbox.NewCgroup(t)}
	e.bpffs = filepath.Join(sandbox.MountBPFFS(t), "socklb")
	t.Cleanup(func() {
		// Whatever the test did, leave nothing attached or pinned.
		if out, err := e.agentCmd("cleanup").CombinedOutput(); err != nil {
			t.Errorf("agent cleanup: %v\n%s", err, out)
		}
	})
	restore, err := e.cg.EnterSelf()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restore(); err != nil {
			t.Error(err)
		}
	})
	e.servicesFile = filepath.Join(t.TempDir(), "services.yaml")
	e.writeServices(t, yaml)
	return e
}

func (e *agentEnv) writeServices(t *testing.T, yaml string) {
	t.Helper()
	tmp := e.servicesFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, e.servicesFile); err != nil {
		t.Fatal(err)
	}
}

// writeServicesSynced writes the file and waits until agent a loaded it
// and synced after that, for a test whose next wait may hold as well
// before the change as after it.
func (e *agentEnv) writeServicesSynced(t *testing.T, a *testagent.Agent, yaml string) {
	t.Helper()
	const loaded = `msg="loaded file"`
	before := strings.Count(a.Logs(), loaded)
	e.writeServices(t, yaml)
	await(t, "the agent loaded the new file and synced", func() bool {
		logs := a.Logs()
		return strings.Count(logs, loaded) > before &&
			strings.Contains(logs[strings.LastIndex(logs, loaded):], `msg="maps synced"`)
	})
}

func (e *agentEnv) agentCmd(args ...string) *exec.Cmd {
	args = append(args, "--bpffs-path="+e.bpffs, "--cgroup-path="+e.cg.Path())
	cmd := exec.Command(agentBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (e *agentEnv) startAgent(t *testing.T) *testagent.Agent {
	t.Helper()
	return testagent.Start(t, e.agentCmd("run", "--services-file="+e.servicesFile, "--min-sync-interval=10ms", "--health-addr=", "--metrics-addr="), nil)
}

type inspectRow struct {
	Frontend string `json:"frontend"`
	ID       uint32 `json:"id"`
	Service  string `json:"service"`
	Backends []struct {
		Address string `json:"address"`
	} `json:"backends"`
	Connects uint64 `json:"connects"`
	Refused  uint64 `json:"refused"`
}

func (e *agentEnv) inspect(t *testing.T) map[string]inspectRow {
	t.Helper()
	rows, err := e.tryInspect()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func (e *agentEnv) tryInspect() (map[string]inspectRow, error) {
	out, err := e.agentCmd("inspect", "--json").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("inspect: %w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("inspect: %w", err)
	}
	var parsed struct {
		Frontends []inspectRow `json:"frontends"`
	}
	if err := json.Unmarshal(out, &parsed); err != nil {
		return nil, fmt.Errorf("inspect output: %w\n%s", err, out)
	}
	m := map[string]inspectRow{}
	for _, r := range parsed.Frontends {
		m[r.Frontend] = r
	}
	return m, nil
}

func (e *agentEnv) waitInspect(t *testing.T, what string, cond func(map[string]inspectRow) bool) map[string]inspectRow {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		// Before the agent has pinned its maps, inspect fails.
		rows, err := e.tryInspect()
		if err == nil && cond(rows) {
			return rows
		}
		if time.Now().After(deadline) {
			t.Fatalf("inspect never showed %s; last: %+v, %v", what, rows, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *agentEnv) pods(t *testing.T, n int, port uint16) {
	t.Helper()
	for i := 1; i <= n; i++ {
		testagent.StartPod(t, e.ns, fmt.Sprintf("pod-%d", i), fmt.Sprintf("198.18.0.%d", i), port)
	}
}

func (e *agentEnv) ask(addr string) (string, error) { return testagent.Ask(e.ns, "tcp4", addr) }

// servicesYAML is a Service web (198.19.0.10:80 → named port http) with
// the given ready pods, and a Service empty (198.19.0.20:80) with none.
func servicesYAML(pods ...int) string {
	var eps strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&eps, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", p)
	}
	if len(pods) == 0 {
		eps.WriteString("[]\n")
	}
	return `apiVersion: v1
kind: Service
metadata: {name: web, namespace: test}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: test
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
` + eps.String() + `---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: test}
spec:
  clusterIP: 198.19.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
`
}

const webFE, emptyFE = "198.19.0.10:80/TCP", "198.19.0.20:80/TCP"

func TestPrivilegedAgentFileSourceInspectAndCleanup(t *testing.T) {
	e := newAgentEnv(t, servicesYAML(1, 2, 3))
	e.pods(t, 3, 8080)
	a := e.startAgent(t)
	rows := e.waitInspect(t, "web with 3 backends", func(r map[string]inspectRow) bool {
		return len(r[webFE].Backends) == 3 && r[emptyFE].Frontend != ""
	})
	if rows[webFE].Service != "test/web:http" {
		t.Errorf("inspect names web %q", rows[webFE].Service)
	}

	for range 30 {
		if _, err := e.ask("198.19.0.10:80"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.ask("198.19.0.20:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("empty service: %v, want ECONNREFUSED", err)
	}
	rows = e.inspect(t)
	if rows[webFE].Connects != 30 || rows[emptyFE].Refused != 1 {
		t.Errorf("counters: web connects=%d empty refused=%d, want 30 and 1",
			rows[webFE].Connects, rows[emptyFE].Refused)
	}
	out, err := e.agentCmd("inspect").Output()
	if err != nil || !strings.Contains(string(out), "test/web:http") || !strings.Contains(string(out), "198.18.0.3:8080") {
		t.Errorf("inspect table: %v\n%s", err, out)
	}

	// The file changes: pod-3 goes away.
	e.writeServices(t, servicesYAML(1, 2))
	e.waitInspect(t, "web with 2 backends", func(r map[string]inspectRow) bool {
		return len(r[webFE].Backends) == 2
	})
	for range 30 {
		if name, err := e.ask("198.19.0.10:80"); err != nil || name == "pod-3" {
			t.Fatalf("after pod-3 left: %q, %v", name, err)
		}
	}

	// cleanup refuses while the agent holds the pin directory, naming
	// it, and changes nothing: the VIP is still served.
	out, err = e.agentCmd("cleanup").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "held by another agent") ||
		!strings.Contains(string(out), strconv.Itoa(a.Cmd.Process.Pid)) {
		t.Errorf("cleanup while the agent runs: %v, want a refusal naming pid %d\n%s", err, a.Cmd.Process.Pid, out)
	}
	if _, err := e.ask("198.19.0.10:80"); err != nil {
		t.Errorf("after a refused cleanup: %v", err)
	}

	// Once the agent is stopped, cleanup detaches: the VIP is no longer
	// rewritten, and nothing is left pinned.
	a.Kill(syscall.SIGTERM)
	if out, err := e.agentCmd("cleanup").CombinedOutput(); err != nil {
		t.Fatalf("cleanup after the agent stopped: %v\n%s", err, out)
	}
	if _, err := e.ask("198.19.0.10:80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("after cleanup: %v, want ENETUNREACH (VIP no longer rewritten)", err)
	}
	if _, err := os.Stat(e.bpffs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after cleanup: %v", err)
	}
}

// TestPrivilegedAgentKillAndRestartUnderLoad SIGKILLs the agent and starts
// it again while clients connect: the pinned links and maps keep serving, so
// no connect fails. Each stage lasts until a number of connects completed
// in it, not for a time: with the first agent, with none, and after the
// restarted one logged its first sync.
func TestPrivilegedAgentKillAndRestartUnderLoad(t *testing.T) {
	e := newAgentEnv(t, servicesYAML(1, 2, 3))
	e.pods(t, 3, 8080)
	first := e.startAgent(t)
	first.WaitServing(t, awaitBound)

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		total, failures int
		firstErr        error
	)
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := e.ask("198.19.0.10:80")
				mu.Lock()
				total++
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				}
				mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	const perStage = 150
	stage := func(name string) {
		t.Helper()
		mu.Lock()
		start := total
		mu.Unlock()
		await(t, fmt.Sprintf("%d connects %s", perStage, name), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return total >= start+perStage
		})
	}
	stage("with the first agent")
	first.Kill(syscall.SIGKILL)
	stage("with no agent")
	second := e.startAgent(t)
	second.WaitServing(t, awaitBound)
	stage("after the restarted agent synced")
	cancel()
	wg.Wait()

	t.Logf("%d connects across SIGKILL and restart: %d failed", total, failures)
	if failures != 0 {
		t.Errorf("%d of %d connects failed; first: %v", failures, total, firstErr)
	}
	// Both are logged before the first sync, and the log is one stream.
	logs := second.Logs()
	if !strings.Contains(logs, "replaced_in_place=true") {
		t.Errorf("restarted agent did not reuse the pinned link:\n%s", logs)
	}
	if !strings.Contains(logs, `msg="restored state from maps" services=2`) {
		t.Errorf("restarted agent did not restore its state from the maps:\n%s", logs)
	}
	if c := e.inspect(t)[webFE].Connects; c != uint64(total) {
		t.Errorf("counters were reset across the restart: %d, want %d", c, total)
	}
}

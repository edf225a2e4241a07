package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/tests/e2e/cluster"
)

// agentBin is built once by TestMain.
var agentBin string

func TestMain(m *testing.M) { testagent.Main(m, "../../..", &agentBin) }

const (
	testNS   = "e2e"
	podPort  = 8080
	waitLong = 20 * time.Second
)

// env is one test's world: a real control plane in its own network
// namespace; "pods" are name servers on that namespace's loopback; each
// node is an agent with its own child cgroup and bpffs.
type env struct {
	c *cluster.Cluster
	// agentKubeconfig is the agents' kubeconfig: a token of deploy/'s
	// ServiceAccount (useAgentServiceAccount), never the admin's.
	agentKubeconfig, agentToken string
}

type node struct {
	name  string
	cg    *sandbox.Cgroup
	bpffs string
	agent *testagent.Agent
}

func newEnv(t *testing.T) *env {
	t.Helper()
	sandbox.RequirePrivileges(t)
	e := &env{c: cluster.Start(t)}
	e.c.CreateNamespace(t, testNS)
	e.useAgentServiceAccount(t)
	return e
}

// node creates a Node object and the cgroup and bpffs its agent will use.
func (e *env) node(t *testing.T, name, zone string) *node {
	t.Helper()
	e.c.CreateNode(t, name, zone)
	n := &node{name: name, cg: sandbox.NewCgroup(t)}
	n.bpffs = filepath.Join(sandbox.MountBPFFS(t), "socklb")
	t.Cleanup(func() {
		out, err := n.cmd("cleanup").CombinedOutput()
		if err != nil {
			t.Errorf("agent cleanup on %s: %v\n%s", name, err, out)
		}
	})
	return n
}

func (n *node) cmd(args ...string) *exec.Cmd {
	return exec.Command(agentBin, append(args, "--bpffs-path="+n.bpffs, "--cgroup-path="+n.cg.Path())...)
}

// startAgent runs this node's agent against the API server, inside the
// cluster's namespace, and waits until its programs serve its first sync.
func (e *env) startAgent(t *testing.T, n *node, extra ...string) *testagent.Agent {
	t.Helper()
	args := append([]string{"run", "--source=kubernetes", "--kubeconfig=" + e.agentKubeconfig,
		"--node-name=" + n.name, "--min-sync-interval=10ms", "--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"}, extra...)
	n.agent = testagent.Start(t, n.cmd(args...), e.c.NS)
	n.agent.WaitServing(t, waitLong)
	return n.agent
}

// pod starts a name server for a pod on the namespace's loopback, on
// podPort and podPort+1, and creates the Pod bound to nodeName.
func (e *env) pod(t *testing.T, name, ip, nodeName string, labels map[string]string, ready bool) {
	t.Helper()
	// ip may be a dual-stack pair "v4,v6"; each address serves the same name.
	for _, a := range strings.Split(ip, ",") {
		testagent.StartPod(t, e.c.NS, name, a, podPort)
		testagent.StartPod(t, e.c.NS, name+"-alt", a, podPort+1)
	}
	e.c.CreatePod(t, testNS, name, labels, nodeName, ip,
		corev1.ContainerPort{Name: "http", ContainerPort: podPort, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "alt", ContainerPort: podPort + 1, Protocol: corev1.ProtocolTCP})
	if ready {
		e.c.SetPodReady(t, testNS, name, true)
	}
}

// service creates a ClusterIP Service for selector on port 80 → the
// named port "http"; mutate may change it before it is created.
func (e *env) service(t *testing.T, name string, selector map[string]string, mutate func(*corev1.Service)) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	svc, err := e.c.Client.CoreV1().Services(testNS).Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	return svc
}

// within runs f with this test process in n's cgroup, so the sockets f
// opens are load-balanced by n's agent.
func within(t *testing.T, n *node, f func()) {
	t.Helper()
	inCgroup(t, n.cg, f)
}

// inCgroup runs f with this test process in cg.
func inCgroup(t *testing.T, cg *sandbox.Cgroup, f func()) {
	t.Helper()
	restore, err := cg.EnterSelf()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := restore(); err != nil {
			t.Error(err)
		}
	}()
	f()
}

// ask connects to addr (an IPv4 or IPv6 literal with a port) from the
// cluster's namespace.
func (e *env) ask(addr string) (string, error) { return testagent.Ask(e.c.NS, "tcp", addr) }

// outcome is what a connect to addr gives: a pod's name, or an error
// class ("refused", "unreachable", or the error text).
func (e *env) outcome(addr string) string {
	name, err := e.ask(addr)
	switch {
	case err == nil:
		return name
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return err.Error()
}

// waitOutcomes connects to addr from inside n's cgroup until a round of
// connects gives exactly want (pod names, "refused" or "unreachable").
func (e *env) waitOutcomes(t *testing.T, n *node, addr string, want ...string) {
	t.Helper()
	e.waitOutcomesFor(t, waitLong, n, addr, want...)
}

func (e *env) waitOutcomesFor(t *testing.T, timeout time.Duration, n *node, addr string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(timeout)
	var got []string
	within(t, n, func() {
		for {
			seen := map[string]bool{}
			for range 30 {
				seen[e.outcome(addr)] = true
			}
			got = got[:0]
			for k := range seen {
				got = append(got, k)
			}
			sort.Strings(got)
			if slices.Equal(got, want) || time.Now().After(deadline) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	if !slices.Equal(got, want) {
		t.Fatalf("connects to %s from %s gave %v, want %v", addr, n.name, got, want)
	}
}

// spread makes count connects to addr from n and counts the outcomes.
func (e *env) spread(t *testing.T, n *node, addr string, count int) map[string]int {
	t.Helper()
	got := map[string]int{}
	within(t, n, func() {
		for range count {
			got[e.outcome(addr)]++
		}
	})
	return got
}

func vip(svc *corev1.Service, port int) string {
	return hostPort(svc.Spec.ClusterIP, port)
}

func hostPort(ip string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)).String()
}

func labelsOf(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func ctxFor(t *testing.T) context.Context { return t.Context() }

// waitBackends waits until n's agent shows frontend (as inspect prints
// it, e.g. "198.19.0.10:80/TCP") with count backends.
func (e *env) waitBackends(t *testing.T, n *node, frontend string, count int) {
	t.Helper()
	cluster.WaitFor(t, fmt.Sprintf("%s with %d backends", frontend, count), waitLong, func(context.Context) (bool, error) {
		out, err := n.cmd("inspect", "--json").Output()
		if err != nil {
			return false, err
		}
		var parsed struct {
			Frontends []struct {
				Frontend string            `json:"frontend"`
				Backends []json.RawMessage `json:"backends"`
			} `json:"frontends"`
		}
		if err := json.Unmarshal(out, &parsed); err != nil {
			return false, err
		}
		for _, f := range parsed.Frontends {
			if f.Frontend == frontend {
				return len(f.Backends) == count, nil
			}
		}
		return false, nil
	})
}

// inspectRow is one frontend of `inspect --json`.
type inspectRow struct {
	Frontend string            `json:"frontend"`
	Kind     string            `json:"kind"`
	Affinity uint32            `json:"affinitySeconds"`
	Local    bool              `json:"local"`
	Backends []json.RawMessage `json:"backends"`
	Policy   string            `json:"policy"`
	// OutlierDetection is the kernel's flag for it.
	OutlierDetection bool `json:"outlierDetection"`
}

// inspect runs n's `agent inspect --json`.
func (n *node) inspect(t *testing.T) (rows map[string]inspectRow, features map[string]bool) {
	t.Helper()
	out, err := n.cmd("inspect", "--json").Output()
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	var parsed struct {
		Frontends []inspectRow `json:"frontends"`
		Features  []struct {
			Name      string `json:"name"`
			Available bool   `json:"available"`
		} `json:"features"`
	}
	if err := json.Unmarshal(out, &parsed); err != nil {
		t.Fatalf("inspect output: %v\n%s", err, out)
	}
	rows, features = map[string]inspectRow{}, map[string]bool{}
	for _, r := range parsed.Frontends {
		rows[r.Frontend] = r
	}
	for _, f := range parsed.Features {
		features[f.Name] = f.Available
	}
	return rows, features
}

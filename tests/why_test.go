package tests

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/why"
)

// whyYAML: web (mixed endpoints, ClientIP affinity, an IPv6 slice a
// single-stack Service does not use), local (internalTrafficPolicy
// Local, one endpoint on each node), close (zone hints for zone-a and
// zone-b) and empty (no endpoint).
const whyYAML = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: test}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  sessionAffinity: ClientIP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: test, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.1], conditions: {ready: true}, nodeName: node-a}
- {addresses: [198.18.0.2], conditions: {ready: false}, nodeName: node-b}
- {addresses: [198.18.0.3], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [198.18.0.4], conditions: {ready: false, serving: false, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: test, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:18::1"], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: test}
spec:
  clusterIP: 198.19.0.30
  ports: [{port: 80, targetPort: 8080}]
  internalTrafficPolicy: Local
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: test, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.5], conditions: {ready: true}, nodeName: node-a}
- {addresses: [198.18.0.6], conditions: {ready: true}, nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: close, namespace: test}
spec:
  clusterIP: 198.19.0.40
  ports: [{port: 80, targetPort: 8080}]
  trafficDistribution: PreferClose
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: close-1, namespace: test, labels: {kubernetes.io/service-name: close}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.7], conditions: {ready: true}, hints: {forZones: [{name: zone-a}]}}
- {addresses: [198.18.0.8], conditions: {ready: true}, hints: {forZones: [{name: zone-b}]}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: test}
spec:
  clusterIP: 198.19.0.20
  ports: [{port: 80, targetPort: 8080}]
`

// askWhy runs `socklb-agent inspect why` against a's health endpoint.
func (e *agentEnv) askWhy(t *testing.T, a *httpAgent, args ...string) why.Report {
	t.Helper()
	out, err := e.agentCmd(append([]string{"inspect", "why", "--json", "--health-addr=" + a.health}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("inspect why %v: %v\n%s", args, err, ee.Stderr)
		}
		t.Fatalf("inspect why %v: %v", args, err)
	}
	var r why.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("inspect why %v: %v\n%s", args, err, out)
	}
	return r
}

// reasonsOf renders a frontend's endpoints as "address: reason".
func reasonsOf(f why.Frontend) []string {
	var out []string
	for _, e := range f.Endpoints {
		out = append(out, e.Address+": "+e.Reason)
	}
	return out
}

func checkReasons(t *testing.T, r why.Report, want ...string) {
	t.Helper()
	if len(r.Frontends) != 1 {
		t.Errorf("%s: %d frontends, want 1: %+v", r.Query, len(r.Frontends), r)
		return
	}
	f := r.Frontends[0]
	if got := reasonsOf(f); !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n\t%s\nwant:\n\t%s", r.Query, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
	if f.Differs != "" {
		t.Errorf("%s: the kernel differs from the plan: %s", r.Query, f.Differs)
	}
}

// TestPrivilegedInspectWhy runs `inspect why` against two running agents,
// one per node (node-a in zone-a, node-b in zone-b), over the same
// Services.
func TestPrivilegedInspectWhy(t *testing.T) {
	// b first: newAgentEnv moves this process into its cgroup, and the
	// connects below are a's.
	b := newAgentEnv(t, whyYAML)
	agentB := b.startHTTPAgent(t, "--node-name=node-b", "--node-zone=zone-b")
	agentB.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	a := newAgentEnv(t, whyYAML)
	testagent.StartPod(t, a.ns, "pod-1", "198.18.0.1", 8080)
	agentA := a.startHTTPAgent(t, "--node-name=node-a", "--node-zone=zone-a")
	agentA.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })

	t.Run("mixed endpoints", func(t *testing.T) {
		r := a.askWhy(t, agentA, "198.19.0.10:80/tcp")
		checkReasons(t, r,
			"198.18.0.1:8080: "+lb.ReasonReady.String(),
			"198.18.0.2:8080: "+lb.ReasonNotReady.String(),
			"198.18.0.3:8080: "+lb.ReasonTerminating.String(),
			"198.18.0.4:8080: "+lb.ReasonTerminatingNotServing.String(),
			"[fd00:18::1]:8080: "+lb.ReasonOtherFamily.String())
		if f := r.Frontends[0]; f.Kernel == nil || !slices.Equal(f.Kernel.Backends, []string{"198.18.0.1:8080"}) ||
			f.Service != "test/web" || f.Kind != "ClusterIP" || f.AffinitySeconds != 10800 {
			t.Errorf("frontend %+v, kernel %+v; want test/web ClusterIP with affinity, the kernel holding 198.18.0.1:8080", f, f.Kernel)
		}
		if !strings.Contains(r.Verdict, "balanced over 1 backend ") {
			t.Errorf("verdict %q", r.Verdict)
		}
		// In words, as operators read it.
		out, err := a.agentCmd("inspect", "why", "198.19.0.10:80", "--health-addr="+agentA.health).CombinedOutput()
		if err != nil {
			t.Fatalf("inspect why: %v\n%s", err, out)
		}
		t.Logf("inspect why 198.19.0.10:80:\n%s", out)
		more, _ := a.agentCmd("inspect", "why", "198.19.0.10:81/tcp", "--health-addr="+agentA.health).CombinedOutput()
		t.Logf("inspect why 198.19.0.10:81/tcp:\n%s", more)
		for _, want := range []string{"198.19.0.10:80/TCP: ClusterIP test/web port \"http\"", "198.18.0.2:8080", "not ready",
			"kernel: frontend id", "plan: 1 backend [198.18.0.1:8080]"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the words lack %q", want)
			}
		}
	})

	t.Run("an affinity client", func(t *testing.T) {
		r := a.askWhy(t, agentA, "198.19.0.10:80/tcp", "--netns="+a.ns.Path())
		if ca := r.Frontends[0].ClientAffinity; r.Client == nil || ca == nil || ca.Present {
			t.Fatalf("before any connect: client %+v, affinity %+v; want none yet", r.Client, ca)
		}
		if got, err := a.ask("198.19.0.10:80"); err != nil || got != "pod-1" {
			t.Fatalf("connect: %q, %v", got, err)
		}
		r = a.askWhy(t, agentA, "198.19.0.10:80/tcp", "--netns="+a.ns.Path())
		if ca := r.Frontends[0].ClientAffinity; ca == nil || !ca.Present || ca.Backend != "198.18.0.1:8080" || ca.Expired {
			t.Errorf("after a connect: affinity %+v, want 198.18.0.1:8080", ca)
		}
		// Another namespace (the agent's own) has no entry.
		r = a.askWhy(t, agentA, "198.19.0.10:80/tcp", "--netns=/proc/self/ns/net")
		if ca := r.Frontends[0].ClientAffinity; ca == nil || ca.Present {
			t.Errorf("another client: affinity %+v, want none", ca)
		}
	})

	t.Run("internalTrafficPolicy Local from two nodes", func(t *testing.T) {
		checkReasons(t, a.askWhy(t, agentA, "198.19.0.30:80/tcp"),
			"198.18.0.5:8080: "+lb.ReasonReady.String(),
			"198.18.0.6:8080: "+lb.ReasonOtherNode.String())
		checkReasons(t, b.askWhy(t, agentB, "198.19.0.30:80/tcp"),
			"198.18.0.5:8080: "+lb.ReasonOtherNode.String(),
			"198.18.0.6:8080: "+lb.ReasonReady.String())
	})

	t.Run("PreferClose from two zones", func(t *testing.T) {
		checkReasons(t, a.askWhy(t, agentA, "198.19.0.40:80/tcp"),
			"198.18.0.7:8080: "+lb.ReasonReady.String(),
			"198.18.0.8:8080: "+lb.ReasonOtherZone.String())
		checkReasons(t, b.askWhy(t, agentB, "198.19.0.40:80/tcp"),
			"198.18.0.7:8080: "+lb.ReasonOtherZone.String(),
			"198.18.0.8:8080: "+lb.ReasonReady.String())
	})

	t.Run("an empty Service", func(t *testing.T) {
		r := a.askWhy(t, agentA, "198.19.0.20:80/tcp")
		checkReasons(t, r)
		if !strings.Contains(r.Verdict, "refused at once (ECONNREFUSED): no usable endpoint") {
			t.Errorf("verdict %q", r.Verdict)
		}
		if _, err := a.ask("198.19.0.20:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect: %v, want ECONNREFUSED as the verdict says", err)
		}
	})

	t.Run("an unknown address", func(t *testing.T) {
		r := a.askWhy(t, agentA, "198.19.0.99:80")
		if len(r.Frontends) != 0 || r.Verdict != "not a Service frontend: socklb leaves it untouched" {
			t.Errorf("%+v", r)
		}
	})

	t.Run("a VIP with an unknown port", func(t *testing.T) {
		r := a.askWhy(t, agentA, "198.19.0.10:81/tcp")
		if len(r.Frontends) != 0 || !strings.Contains(r.Verdict, "a ClusterIP of test/web, which has no port 81/TCP") ||
			len(r.KnownPorts) != 1 || r.KnownPorts[0].Port != "80/TCP" {
			t.Errorf("%+v", r)
		}
		start := time.Now()
		_, err := a.ask("198.19.0.10:81")
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			t.Errorf("connect: %v after %v, want ECONNREFUSED at once as the verdict says", err, time.Since(start))
		}
	})

	t.Run("bad queries", func(t *testing.T) {
		for _, q := range []string{"198.19.0.10", "198.19.0.10:80/sctp", "web:80"} {
			out, err := a.agentCmd("inspect", "why", q, "--health-addr="+agentA.health).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "bad query") {
				t.Errorf("inspect why %s: %v\n%s; want a bad query error", q, err, out)
			}
		}
		file := filepath.Join(t.TempDir(), "not-a-netns")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := a.agentCmd("inspect", "why", "198.19.0.10:80", "--netns="+file, "--health-addr="+agentA.health).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "not a network namespace") {
			t.Errorf("--netns=%s: %v\n%s; want an error", file, err, out)
		}
	})
}

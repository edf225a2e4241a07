package tests

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/lb"
)

// capacityServices is n Services cap/svc-NNN at 198.19.1.N:80, each with
// the pods 198.18.0.1..k on 8080 (shared: the backend map holds k). The
// Services named in pods get that many endpoints instead of k.
func capacityServices(n, k int, pods map[int]int) string {
	var b strings.Builder
	for i := range n {
		endpoints := k
		if p, ok := pods[i]; ok {
			endpoints = p
		}
		fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: svc-%03d, namespace: cap, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  clusterIP: 198.19.1.%d
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-%03d-1
  namespace: cap
  labels: {kubernetes.io/service-name: svc-%03d}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
`, i, i+1, i, i)
		for p := 1; p <= endpoints; p++ {
			fmt.Fprintf(&b, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", p)
		}
		if endpoints == 0 {
			b.WriteString("[]\n")
		}
		b.WriteString("---\n")
	}
	return b.String()
}

// httpAgent is an agent started with its health and metrics endpoints on
// loopback ports the kernel chose, read back from its log.
type httpAgent struct {
	*testagent.Agent
	health, metrics string
}

var listenLine = regexp.MustCompile(`msg="(health|metrics) endpoint listening" addr=(\S+)`)

func (e *agentEnv) startHTTPAgent(t *testing.T, args ...string) *httpAgent {
	t.Helper()
	args = append([]string{"run", "--services-file=" + e.servicesFile, "--min-sync-interval=10ms",
		"--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"}, args...)
	a := &httpAgent{Agent: testagent.Start(t, e.agentCmd(args...), nil)}
	a.WaitLog(t, `msg="metrics endpoint listening"`, 15*time.Second)
	a.WaitLog(t, `msg="health endpoint listening"`, 15*time.Second)
	for _, m := range listenLine.FindAllStringSubmatch(a.Logs(), -1) {
		if m[1] == "health" {
			a.health = m[2]
		} else {
			a.metrics = m[2]
		}
	}
	return a
}

func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// status is the agent's /status.
type agentStatusJSON struct {
	Ready        bool     `json:"ready"`
	NotReady     []string `json:"notReady"`
	Synced       bool     `json:"synced"`
	InSync       bool     `json:"inSync"`
	Attached     bool     `json:"attached"`
	OverCapacity []struct {
		Service  string `json:"service"`
		Name     string `json:"name"`
		Frontend string `json:"frontend"`
		Backends int    `json:"backends"`
		Stale    bool   `json:"stale"`
	} `json:"overCapacity"`
	Ejected []struct {
		Backend   string    `json:"backend"`
		Until     time.Time `json:"until"`
		Ejections int       `json:"ejections"`
		Services  []string  `json:"services"`
	} `json:"ejected"`
}

func (a *httpAgent) status(t *testing.T) agentStatusJSON {
	t.Helper()
	code, body, err := httpGet("http://" + a.health + "/status")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/status: %d %v\n%s", code, err, body)
	}
	var s agentStatusJSON
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return s
}

// metric returns the value of the sample whose line starts with name
// (a metric name with its labels, as exposed), or -1 when there is none.
func (a *httpAgent) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body, err := httpGet("http://" + a.metrics + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return -1
}

// waitStatus polls /status until cond holds; the deadline only bounds a
// failing test.
func (a *httpAgent) waitStatus(t *testing.T, what string, cond func(agentStatusJSON) bool) agentStatusJSON {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := a.status(t)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("/status never showed %s; last: %+v\nagent log:\n%s", what, s, a.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPrivilegedFinding2CapacityAtSmallMapSize runs the agent with a
// service map of 1024 entries and 120 Services of 10 endpoints, more than
// fit. A fresh start attaches the hooks and serves the Services that fit,
// by name; the rest are named in the log, the metric, /status, /readyz and
// inspect. Deleting and shrinking served Services while the map is full
// apply, and the freed room goes to the next Services by name; a change of
// a served Service while full applies.
func TestPrivilegedFinding2CapacityAtSmallMapSize(t *testing.T) {
	const (
		services = 120
		per      = 10
		// Each Service takes its entry and 10 slots; 10 entries stay free
		// for republishing the largest one (double buffer).
		fit = (1024 - per) / (1 + per)
	)
	e := newAgentEnv(t, capacityServices(services, per, nil))
	e.pods(t, per+1, 8080)
	a := e.startHTTPAgent(t, "--service-map-entries=1024", "--backend-map-entries=1024")

	st := a.waitStatus(t, "the first sync with the hooks attached", func(s agentStatusJSON) bool {
		return s.Synced && s.Attached
	})
	if len(st.OverCapacity) != services-fit || st.Ready {
		t.Fatalf("over capacity: %d frontends, ready=%v; want %d and not ready\n%s",
			len(st.OverCapacity), st.Ready, services-fit, a.Logs())
	}
	for i, o := range st.OverCapacity {
		if want := fmt.Sprintf("cap/svc-%03d", fit+i); o.Service != want || o.Backends != per || o.Stale {
			t.Errorf("over capacity #%d: %+v, want %s with %d backends, not served", i, o, want, per)
		}
	}
	if !strings.Contains(a.Logs(), "the BPF maps are full") || !strings.Contains(a.Logs(), fmt.Sprintf("cap/svc-%03d:http", fit)) {
		t.Errorf("the log does not name the frontends that do not fit:\n%s", a.Logs())
	}
	if v := a.metric(t, "socklb_frontends_over_capacity"); v != float64(services-fit) {
		t.Errorf("socklb_frontends_over_capacity = %v, want %d", v, services-fit)
	}
	if v := a.metric(t, "socklb_frontends_programmed"); v != float64(fit) {
		t.Errorf("socklb_frontends_programmed = %v, want %d", v, fit)
	}
	code, body, err := httpGet("http://" + a.health + "/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "do not fit") {
		t.Errorf("/readyz over capacity: %d %q %v, want 503 naming the cause", code, body, err)
	}
	out, err := e.agentCmd("inspect", "--health-addr="+a.health).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("OVER CAPACITY: %d frontends", services-fit)) ||
		!strings.Contains(string(out), fmt.Sprintf("cap/svc-%03d:http", services-1)) {
		t.Errorf("inspect does not list the frontends that do not fit: %v\n%s", err, out)
	}

	vip := func(i int) string { return fmt.Sprintf("198.19.1.%d:80", i+1) }
	if _, err := e.ask(vip(0)); err != nil {
		t.Errorf("served Service svc-000: %v", err)
	}
	if _, err := e.ask(vip(fit)); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("Service svc-%03d that does not fit: %v, want ENETUNREACH (not rewritten)", fit, err)
	}
	checkWhyOverCapacity(t, e, a, vip(fit))

	// Delete svc-000 and shrink svc-001 to 5 endpoints with the map full:
	// both apply, and the room freed (11 + 5 entries) takes the next
	// Service by name, svc-092 (11 entries); the 5 left are too few for
	// another.
	yaml := capacityServices(services, per, map[int]int{1: 5})
	yaml = yaml[strings.Index(yaml, "apiVersion: v1\nkind: Service\nmetadata: {name: svc-001"):]
	e.writeServices(t, yaml)
	st = a.waitStatus(t, "the delete and the shrink applied", func(s agentStatusJSON) bool {
		return len(s.OverCapacity) == services-1-fit
	})
	if st.OverCapacity[0].Service != fmt.Sprintf("cap/svc-%03d", fit+1) {
		t.Errorf("after the delete: first over capacity %s, want svc-%03d (svc-%03d took the room)",
			st.OverCapacity[0].Service, fit+1, fit)
	}
	rows := e.inspect(t)
	if _, ok := rows["198.19.1.1:80/TCP"]; ok {
		t.Error("the deleted svc-000 is still in the service map")
	}
	if n := len(rows["198.19.1.2:80/TCP"].Backends); n != 5 {
		t.Errorf("the shrunk svc-001 has %d backends, want 5", n)
	}
	if _, err := e.ask(vip(0)); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("deleted svc-000: %v, want ENETUNREACH", err)
	}
	if _, err := e.ask(vip(fit)); err != nil {
		t.Errorf("svc-%03d, served after the delete: %v", fit, err)
	}

	// A change of a served Service while the map is full (one endpoint
	// replaced by pod 11): applied, since its republish has the reserve.
	changed := yaml
	slice := strings.Index(changed, "name: svc-002-1")
	end := slice + strings.Index(changed[slice:], "---\n")
	changed = changed[:slice] + strings.Replace(changed[slice:end], "198.18.0.10]", "198.18.0.11]", 1) + changed[end:]
	e.writeServices(t, changed)
	e.waitInspect(t, "svc-002 with pod 11", func(r map[string]inspectRow) bool {
		for _, b := range r["198.19.1.3:80/TCP"].Backends {
			if b.Address == "198.18.0.11:8080/TCP" {
				return true
			}
		}
		return false
	})
	for range 20 {
		if name, err := e.ask(vip(2)); err != nil || name == "pod-10" {
			t.Fatalf("svc-002 after the change: %q, %v", name, err)
		}
	}
	if st := a.status(t); !st.InSync || len(st.OverCapacity) != services-1-fit {
		t.Errorf("after the change: in sync %v, %d over capacity; want true and %d", st.InSync, len(st.OverCapacity), services-1-fit)
	}

	// Everything fits once the map is not needed by 40 Services.
	e.writeServices(t, capacityServices(services-40, per, nil))
	st = a.waitStatus(t, "every frontend served", func(s agentStatusJSON) bool { return s.Ready })
	if len(st.OverCapacity) != 0 || a.metric(t, "socklb_frontends_over_capacity") != 0 {
		t.Errorf("after shrinking the file: %+v", st)
	}
	if !strings.Contains(a.Logs(), "every frontend fits in the maps again") {
		t.Error("no log line says that every frontend fits again")
	}
}

// checkWhyOverCapacity: `inspect why` says a frontend without room is not
// programmed, every endpoint left out for it, and that the address's
// unknown ports are not refused then (a connect there leaves untranslated,
// as the kernel does).
func checkWhyOverCapacity(t *testing.T, e *agentEnv, a *httpAgent, addr string) {
	t.Helper()
	r := e.askWhy(t, a, addr+"/tcp")
	if len(r.Frontends) != 1 {
		t.Fatalf("inspect why %s: %+v, want one frontend", addr, r)
	}
	f := r.Frontends[0]
	if !f.OverCapacity || f.KeptOlderVersion || f.Kernel != nil || f.Differs != "" ||
		!strings.Contains(r.Verdict, "over map capacity; not programmed") {
		t.Errorf("inspect why %s: %+v, verdict %q; want over capacity, not in the kernel, no difference", addr, f, r.Verdict)
	}
	for _, ep := range f.Endpoints {
		if ep.Used || ep.Reason != lb.ReasonOverCapacity.String() {
			t.Errorf("inspect why %s: endpoint %+v; want out, %q", addr, ep, lb.ReasonOverCapacity)
		}
	}
	if len(f.Endpoints) != 10 {
		t.Errorf("inspect why %s: %d endpoints, want 10", addr, len(f.Endpoints))
	}
	host, _, _ := strings.Cut(addr, ":")
	other := host + ":81"
	r = e.askWhy(t, a, other+"/tcp")
	if u := r.UnknownPorts; u == nil || u.Refused || !u.OverCapacity || u.Differs != "" ||
		!strings.HasPrefix(r.Verdict, "left untranslated: a ClusterIP of ") {
		t.Errorf("inspect why %s: verdict %q, unknown ports %+v; want left untranslated, over capacity", other, r.Verdict, u)
	}
	if _, err := e.ask(other); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("connect to %s: %v, want ENETUNREACH (untranslated, as inspect why says)", other, err)
	}
}

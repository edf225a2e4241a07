package scenarios

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/tests/e2e/cluster"
)

// TestPrivilegedReadinessAndMetrics: /readyz stays 503 while the agent
// cannot reach the API server and turns 200 after its first sync, while
// /healthz is 200 all along; /metrics then counts exactly the connects
// made to the Service, from the BPF counters.
func TestPrivilegedReadinessAndMetrics(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	for i := 1; i <= 2; i++ {
		e.pod(t, fmt.Sprintf("web-%d", i), fmt.Sprintf("198.18.0.%d", i), "node-a", web, true)
	}
	svc := e.service(t, "web", web, nil)

	e.c.StopAPIServer(t)
	// At debug level the syncer logs each sync it defers for a source
	// that has not synced.
	agent := testagent.Start(t, a.cmd("run", "--source=kubernetes", "--kubeconfig="+e.agentKubeconfig,
		"--node-name=node-a", "--min-sync-interval=10ms", "--log-level=debug",
		"--health-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"), e.c.NS)
	agent.WaitLog(t, "health endpoint listening", waitLong)
	agent.WaitLog(t, "metrics endpoint listening", waitLong)
	health := "http://" + listenAddr(t, agent, "health")
	metrics := "http://" + listenAddr(t, agent, "metrics") + "/metrics"
	client := e.httpClient()
	// Without an API server: alive, not ready. So that "not ready" means
	// something, the agent first shows it had its chance to sync and
	// declined: a node address added now makes it try a sync, which it
	// defers (its Kubernetes source cannot have synced). Readiness is
	// checked all along and once more after that.
	notReady := func() {
		t.Helper()
		if code := get(t, client, health+"/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz = %d before the first sync, want 200", code)
		}
		if code := get(t, client, health+"/readyz"); code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz = %d with the API server down, want 503", code)
		}
	}
	notReady()
	if err := e.c.NS.AddAddr(netip.MustParsePrefix("198.18.201.1/32")); err != nil {
		t.Fatal(err)
	}
	cluster.WaitFor(t, "the agent to defer a sync after the address change", waitLong, func(context.Context) (bool, error) {
		notReady()
		changed := false
		for line := range strings.Lines(agent.Logs()) {
			switch {
			case strings.Contains(line, `msg="node addresses changed"`) && strings.Contains(line, "added=[198.18.201.1]"):
				changed = true
			case changed && strings.Contains(line, `msg="sync deferred: a source has not synced yet"`):
				return true, nil
			}
		}
		return false, nil
	})
	notReady()
	if m := scrape(t, client, metrics); value(m, "socklb_frontends_programmed", nil) != 0 {
		t.Errorf("frontends programmed before the first sync: %v", value(m, "socklb_frontends_programmed", nil))
	}

	e.c.StartAPIServer(t)
	agent.WaitLog(t, "maps synced", time.Minute)
	// Ready needs the programs attached too, which new maps get right
	// after the first sync.
	agent.WaitLog(t, "programs attached after the first sync filled the maps", waitLong)
	if code := get(t, client, health+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d after the first sync, want 200", code)
	}
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2")

	port := map[string]string{"namespace": testNS, "service": "web", "port": "http"}
	before := value(scrape(t, client, metrics), "socklb_service_connects_total", port)
	const connects = 50
	e.spread(t, a, vip(svc, 80), connects)
	m := scrape(t, client, metrics)
	if got := value(m, "socklb_service_connects_total", port) - before; got != connects {
		t.Errorf("socklb_service_connects_total grew by %v over %d connects", got, connects)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"socklb_frontends_programmed", nil, 1},
		{"socklb_backends_programmed", nil, 2},
		{"socklb_sync_duration_seconds", nil, 1}, // the histogram's count
		{"socklb_map_fill_ratio", map[string]string{"map": "socklb_svc_v3"}, 1e-9},
		{"socklb_map_entries", map[string]string{"map": "socklb_be_v3"}, 2},
		{"socklb_kernel_feature_available", nil, 0},
		{"socklb_build_info", nil, 1},
	} {
		if _, ok := m[c.name]; !ok {
			t.Errorf("metric %s missing", c.name)
			continue
		}
		if got := value(m, c.name, c.labels); got < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.min)
		}
	}
	// Every frontend (the API server's own "kubernetes" Service is one) has
	// an entry and a slot per backend, a name and a counter.
	rows, _ := a.inspect(t)
	svcEntries, backends := 0, map[string]bool{}
	for _, r := range rows {
		svcEntries += 1 + len(r.Backends)
		for _, b := range r.Backends {
			backends[string(b)] = true
		}
	}
	for mapName, want := range map[string]int{
		"socklb_svc_v3": svcEntries, "socklb_be_v3": len(backends),
		"socklb_name_v3": len(rows), "socklb_cnt_v3": len(rows),
	} {
		if got := value(m, "socklb_map_entries", map[string]string{"map": mapName}); got != float64(want) {
			t.Errorf("socklb_map_entries{map=%q} = %v, want %v", mapName, got, want)
		}
	}
	for _, name := range []string{"socklb_sync_errors_total", "socklb_datapath_scrape_errors"} {
		if got := value(m, name, nil); got != 0 {
			t.Errorf("%s = %v, want 0", name, got)
		}
	}
}

// httpClient makes requests from inside the cluster's namespace, where
// the agents' endpoints listen.
func (e *env) httpClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       e.c.NS.Dial,
			Proxy:             func(*http.Request) (*url.URL, error) { return nil, nil },
			DisableKeepAlives: true,
		},
		Timeout: 5 * time.Second,
	}
}

var listenRE = regexp.MustCompile(`msg="(\w+) endpoint listening" addr=(\S+)`)

// listenAddr is where the agent's endpoint what listens, from its log.
func listenAddr(t *testing.T, a *testagent.Agent, what string) string {
	t.Helper()
	for _, m := range listenRE.FindAllStringSubmatch(a.Logs(), -1) {
		if m[1] == what {
			return m[2]
		}
	}
	t.Fatalf("no %q endpoint address in the agent's log:\n%s", what, a.Logs())
	return ""
}

func get(t *testing.T, c *http.Client, u string) int {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func scrape(t *testing.T, c *http.Client, u string) map[string]*dto.MetricFamily {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", u, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", u, err)
	}
	return fams
}

// value is the sum of the samples of name whose labels include labels;
// for a histogram, its count.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

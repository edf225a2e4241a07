package metrics

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

func publish(t *testing.T, f *maps.Fake, id maps.RevNATID, addr, name string, backends ...maps.BackendID) maps.Frontend {
	t.Helper()
	fe := maps.Frontend{Addr: netip.MustParseAddr(addr), Port: 80, Proto: maps.ProtoTCP}
	if err := f.PublishService(maps.Service{Frontend: fe, RevNATID: id, Name: name, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	return fe
}

func TestDatapathCountersSumFrontendsOfOnePort(t *testing.T) {
	f := maps.NewFake()
	if err := f.UpsertBackend(1, maps.Backend{Addr: netip.MustParseAddr("198.18.0.1"), Port: 8080, Proto: maps.ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	v4 := publish(t, f, 1, "198.19.0.1", "shop/web:http", 1)
	v6 := publish(t, f, 2, "2001:2:0:19::1", "shop/web:http", 1)
	empty := publish(t, f, 3, "198.19.0.2", "shop/db", nil...)
	for range 3 {
		if _, _, err := f.Lookup(v4, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := f.Lookup(v6, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Lookup(empty, 0); !errors.Is(err, maps.ErrNoBackend) {
		t.Fatalf("lookup of an empty service: %v, want ErrNoBackend", err)
	}

	features := []loader.Feature{{Name: "bpf_sock_destroy", Available: true}, {Name: "old thing", Available: false}}
	usage := func() ([]maps.Usage, error) {
		return []maps.Usage{{Map: "socklb_svc_v3", Entries: 5, MaxEntries: 20}}, nil
	}
	d := NewDatapath(f, usage, features, slog.New(slog.DiscardHandler))
	want := `
# HELP socklb_service_connects_total Connects (and unconnected UDP sends) to a Service port that the BPF programs sent to a backend, summed over the port's frontends.
# TYPE socklb_service_connects_total counter
socklb_service_connects_total{namespace="shop",port="",service="db"} 0
socklb_service_connects_total{namespace="shop",port="http",service="web"} 4
# HELP socklb_service_no_backend_refusals_total Connects to a Service port refused with ECONNREFUSED because it had no backend, summed over the port's frontends.
# TYPE socklb_service_no_backend_refusals_total counter
socklb_service_no_backend_refusals_total{namespace="shop",port="",service="db"} 1
socklb_service_no_backend_refusals_total{namespace="shop",port="http",service="web"} 0
# HELP socklb_map_fill_ratio Entries over capacity of a BPF map; writes fail at 1.
# TYPE socklb_map_fill_ratio gauge
socklb_map_fill_ratio{map="socklb_svc_v3"} 0.25
# HELP socklb_kernel_feature_available 1 if the running kernel has the feature, as probed at start.
# TYPE socklb_kernel_feature_available gauge
socklb_kernel_feature_available{feature="bpf_sock_destroy"} 1
socklb_kernel_feature_available{feature="old thing"} 0
# HELP socklb_datapath_scrape_errors 1 if the last scrape could not read part of the BPF maps (see the agent's log).
# TYPE socklb_datapath_scrape_errors gauge
socklb_datapath_scrape_errors 0
`
	if err := testutil.CollectAndCompare(d, strings.NewReader(want),
		"socklb_service_connects_total", "socklb_service_no_backend_refusals_total",
		"socklb_map_fill_ratio", "socklb_kernel_feature_available", "socklb_datapath_scrape_errors"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(d); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

type failingStats struct{}

func (failingStats) FrontendStats() ([]maps.FrontendStats, error) {
	return nil, errors.New("map gone")
}

func (failingStats) BackendStats() (map[maps.BackendID]maps.BackendStats, error) {
	return nil, errors.New("map gone")
}

func (failingStats) Backends() (map[maps.BackendID]maps.Backend, error) {
	return nil, errors.New("map gone")
}

func (failingStats) VIPRefusals() (map[netip.Addr]uint64, error) {
	return nil, errors.New("map gone")
}

func TestDatapathReportsAFailedReadWithoutFailingTheScrape(t *testing.T) {
	d := NewDatapath(failingStats{}, nil, nil, slog.New(slog.DiscardHandler))
	want := `
# HELP socklb_datapath_scrape_errors 1 if the last scrape could not read part of the BPF maps (see the agent's log).
# TYPE socklb_datapath_scrape_errors gauge
socklb_datapath_scrape_errors 1
`
	if err := testutil.CollectAndCompare(d, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestFinding2GaugesSayWhatTheKernelHoldsAfterAFailedSync: a sync that
// fails half-way has still written some frontends; the gauges follow the
// kernel, not the last success, and the in-sync gauge drops.
func TestFinding2GaugesSayWhatTheKernelHoldsAfterAFailedSync(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := NewSync(reg)
	s.Observe(SyncResult{Took: 3 * time.Millisecond, Frontends: 10, Backends: 40, OverCapacity: 2})
	s.Observe(SyncResult{Took: time.Second, Frontends: 12, Backends: 41, Err: errors.New("map full")})
	s.Repaired("missing_frontend", 3)
	want := `
# HELP socklb_frontends_programmed Frontends (service address, port and protocol) in the BPF maps now, after the last sync attempt.
# TYPE socklb_frontends_programmed gauge
socklb_frontends_programmed 12
# HELP socklb_backends_programmed Distinct backends in the BPF maps now, after the last sync attempt.
# TYPE socklb_backends_programmed gauge
socklb_backends_programmed 41
# HELP socklb_sync_errors_total Map syncs that failed; the next one is a full resync.
# TYPE socklb_sync_errors_total counter
socklb_sync_errors_total 1
# HELP socklb_maps_in_sync 1 while the last map sync wrote everything it planned, 0 after a failed one until a sync succeeds.
# TYPE socklb_maps_in_sync gauge
socklb_maps_in_sync 0
# HELP socklb_frontends_over_capacity Frontends the BPF maps have no room for: not programmed, or kept at an older version (see the log and inspect).
# TYPE socklb_frontends_over_capacity gauge
socklb_frontends_over_capacity 2
# HELP socklb_drift_repaired_total Differences between the kernel and what the agent wrote, found by a reconciliation and repaired, by kind.
# TYPE socklb_drift_repaired_total counter
socklb_drift_repaired_total{kind="missing_frontend"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"socklb_frontends_programmed", "socklb_backends_programmed", "socklb_sync_errors_total",
		"socklb_maps_in_sync", "socklb_frontends_over_capacity", "socklb_drift_repaired_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(s.duration); n != 1 {
		t.Fatalf("duration histogram: %d series, want 1", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

func TestParseName(t *testing.T) {
	for in, want := range map[string]serviceKey{
		"ns/web:http": {"ns", "web", "http"},
		"ns/web":      {"ns", "web", ""},
		"odd":         {"", "odd", ""},
		"ns/web:a:b":  {"ns", "web", "a:b"},
	} {
		if got := parseName(in); got != want {
			t.Errorf("parseName(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func TestDatapathCountersNeverFallWhenAFrontendGoes(t *testing.T) {
	f := maps.NewFake()
	if err := f.UpsertBackend(1, maps.Backend{Addr: netip.MustParseAddr("198.18.0.1"), Port: 8080, Proto: maps.ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	v4 := publish(t, f, 1, "198.19.0.1", "shop/web:http", 1)
	external := publish(t, f, 2, "198.19.9.9", "shop/web:http", 1)
	connect := func(fe maps.Frontend, n int) {
		t.Helper()
		for range n {
			if _, _, err := f.Lookup(fe, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	d := NewDatapath(f, nil, nil, slog.New(slog.DiscardHandler))
	connects := func() float64 {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(d)
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, fam := range fams {
			if fam.GetName() != "socklb_service_connects_total" {
				continue
			}
			for _, m := range fam.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "service" && l.GetValue() == "web" {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return -1 // no series
	}

	connect(v4, 3)
	connect(external, 1)
	if got := connects(); got != 4 {
		t.Fatalf("connects = %v, want 4", got)
	}
	// The external IP goes: its frontend and its counters with it.
	if err := f.DeleteService(external); err != nil {
		t.Fatal(err)
	}
	if got := connects(); got != 4 {
		t.Fatalf("after the external frontend went: connects = %v, want 4 (a counter must not fall)", got)
	}
	connect(v4, 2)
	if got := connects(); got != 6 {
		t.Fatalf("connects = %v, want 6", got)
	}
	// Its id is reused for another Service: web keeps what it had.
	publish(t, f, 2, "198.19.0.7", "shop/db:sql", 1)
	if got := connects(); got != 6 {
		t.Fatalf("after id reuse: connects = %v, want 6", got)
	}
	// The last frontend goes: so does the series.
	if err := f.DeleteService(v4); err != nil {
		t.Fatal(err)
	}
	if got := connects(); got != -1 {
		t.Fatalf("after the Service went: connects = %v, want no series", got)
	}
}

// TestDestroyPassCountsEveryPass: a pass that closed nothing is counted
// too, so an operator (and a test) can see that destruction ran.
func TestDestroyPassCountsEveryPass(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := NewSync(reg)
	s.DestroyPass("ok", 0)
	s.DestroyPass("ok", 3)
	s.DestroyPass("unsupported", 0)
	want := `
# HELP socklb_socket_destroy_passes_total Passes over the node's sockets for backends that left their Service, by result (ok, error, unsupported).
# TYPE socklb_socket_destroy_passes_total counter
socklb_socket_destroy_passes_total{result="ok"} 2
socklb_socket_destroy_passes_total{result="unsupported"} 1
# HELP socklb_sockets_destroyed_total Sockets closed because their backend left their Service.
# TYPE socklb_sockets_destroyed_total counter
socklb_sockets_destroyed_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"socklb_socket_destroy_passes_total", "socklb_sockets_destroyed_total"); err != nil {
		t.Error(err)
	}
}

// Package metrics owns the agent's Prometheus metrics: what the syncer
// reports after every sync, and a collector that reads the BPF maps (per-CPU
// connect counters, map fill) when Prometheus scrapes, so that the numbers
// are the kernel's at that moment and cost nothing between scrapes.
package metrics

import (
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
)

const namespace = "socklb"

// Sync records the outcome of map syncs and of the jobs beside them.
type Sync struct {
	duration     prometheus.Histogram
	errors       prometheus.Counter
	frontends    prometheus.Gauge
	backends     prometheus.Gauge
	overCapacity prometheus.Gauge
	inSync       prometheus.Gauge
	lastOK       prometheus.Gauge
	repaired     *prometheus.CounterVec
	destroyed    prometheus.Counter
	passes       *prometheus.CounterVec
}

// NewSync registers the sync metrics with reg.
func NewSync(reg prometheus.Registerer) *Sync {
	s := &Sync{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "sync_duration_seconds",
			Help: "Time of one map sync: the model computed from the sources and the diff written to the BPF maps.",
			// From a no-op sync (tens of µs) to a cold start of 100 000
			// Services (seconds).
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sync_errors_total",
			Help: "Map syncs that failed; the next one is a full resync.",
		}),
		frontends: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "frontends_programmed",
			Help: "Frontends (service address, port and protocol) in the BPF maps now, after the last sync attempt.",
		}),
		backends: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backends_programmed",
			Help: "Distinct backends in the BPF maps now, after the last sync attempt.",
		}),
		overCapacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "frontends_over_capacity",
			Help: "Frontends the BPF maps have no room for: not programmed, or kept at an older version (see the log and inspect).",
		}),
		inSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "maps_in_sync",
			Help: "1 while the last map sync wrote everything it planned, 0 after a failed one until a sync succeeds.",
		}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_successful_sync_timestamp_seconds",
			Help: "Unix time of the last successful map sync.",
		}),
		repaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "drift_repaired_total",
			Help: "Differences between the kernel and what the agent wrote, found by a reconciliation and repaired, by kind.",
		}, []string{"kind"}),
		destroyed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sockets_destroyed_total",
			Help: "Sockets closed because their backend left their Service.",
		}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "socket_destroy_passes_total",
			Help: "Passes over the node's sockets for backends that left their Service, by result (ok, error, unsupported).",
		}, []string{"result"}),
	}
	reg.MustRegister(s.duration, s.errors, s.frontends, s.backends, s.overCapacity, s.inSync, s.lastOK,
		s.repaired, s.destroyed, s.passes)
	return s
}

// SyncResult is what one sync attempt reports.
type SyncResult struct {
	Took time.Duration
	// Frontends and Backends are what the maps hold after the attempt,
	// successful or not.
	Frontends, Backends int
	// OverCapacity counts the frontends without room (after a success).
	OverCapacity int
	Err          error
}

// Observe records one sync attempt.
func (s *Sync) Observe(r SyncResult) {
	s.duration.Observe(r.Took.Seconds())
	s.frontends.Set(float64(r.Frontends))
	s.backends.Set(float64(r.Backends))
	if r.Err != nil {
		s.errors.Inc()
		s.inSync.Set(0)
		return
	}
	s.inSync.Set(1)
	s.overCapacity.Set(float64(r.OverCapacity))
	s.lastOK.SetToCurrentTime()
}

// Repaired counts n repaired differences of one kind.
func (s *Sync) Repaired(kind string, n int) {
	if n > 0 {
		s.repaired.WithLabelValues(kind).Add(float64(n))
	}
}

// DestroyPass counts one pass of socket destruction that closed n
// sockets; result is ok, error or unsupported.
func (s *Sync) DestroyPass(result string, n int) {
	s.passes.WithLabelValues(result).Inc()
	if n > 0 {
		s.destroyed.Add(float64(n))
	}
}

// Datapath collects, at scrape time, the per-service counters and map
// fill from the kernel, and the kernel features probed at start.
type Datapath struct {
	stats    maps.Stats
	usage    func() ([]maps.Usage, error)
	features []loader.Feature
	log      *slog.Logger

	// A Service port's counter is the sum over its frontends, and a
	// frontend's counters go with it (an external IP removed, a node
	// address gone). So that the sum never falls, which Prometheus would
	// read as a reset, the last values seen of a removed frontend are
	// carried while its Service port has other frontends.
	mu      sync.Mutex
	last    map[maps.RevNATID]frontendSeen
	carried map[serviceKey]maps.Counters
	// The refusals at cluster IPs are counted per address, and an
	// address's count goes with its entry (its Service deleted). So that
	// the total never falls, the last count seen of an address that went,
	// or came back lower, stays in vipGone.
	lastVIP map[netip.Addr]uint64
	vipGone uint64

	connects, refused, unknownPort, entries, maxEntries, fill, feature, scrapeErrors *prometheus.Desc
}

// NewDatapath returns a collector over stats and usage (maps.MapUsage on
// the agent's maps; nil leaves map fill out) that also exports features.
// Register it with a prometheus.Registerer.
func NewDatapath(stats maps.Stats, usage func() ([]maps.Usage, error), features []loader.Feature, log *slog.Logger) *Datapath {
	svcLabels := []string{"namespace", "service", "port"}
	return &Datapath{
		stats: stats, usage: usage, features: features, log: log,
		carried: make(map[serviceKey]maps.Counters),
		connects: prometheus.NewDesc(namespace+"_service_connects_total",
			"Connects (and unconnected UDP sends) to a Service port that the BPF programs sent to a backend, summed over the port's frontends.",
			svcLabels, nil),
		refused: prometheus.NewDesc(namespace+"_service_no_backend_refusals_total",
			"Connects to a Service port refused with ECONNREFUSED because it had no backend, summed over the port's frontends.",
			svcLabels, nil),
		unknownPort: prometheus.NewDesc(namespace+"_unknown_port_refusals_total",
			"Connects and sends to a cluster IP at a port and protocol that its Service does not have, refused with ECONNREFUSED.",
			nil, nil),
		entries: prometheus.NewDesc(namespace+"_map_entries",
			"Entries in a BPF map.", []string{"map"}, nil),
		maxEntries: prometheus.NewDesc(namespace+"_map_max_entries",
			"Capacity of a BPF map.", []string{"map"}, nil),
		fill: prometheus.NewDesc(namespace+"_map_fill_ratio",
			"Entries over capacity of a BPF map; writes fail at 1.", []string{"map"}, nil),
		feature: prometheus.NewDesc(namespace+"_kernel_feature_available",
			"1 if the running kernel has the feature, as probed at start.", []string{"feature"}, nil),
		scrapeErrors: prometheus.NewDesc(namespace+"_datapath_scrape_errors",
			"1 if the last scrape could not read part of the BPF maps (see the agent's log).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (d *Datapath) Describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{d.connects, d.refused, d.unknownPort, d.entries, d.maxEntries, d.fill, d.feature, d.scrapeErrors} {
		ch <- desc
	}
}

type serviceKey struct{ namespace, service, port string }

type frontendSeen struct {
	key serviceKey
	maps.Counters
}

// sumByPort adds up fronts per Service port, plus what removed frontends
// had counted, and remembers fronts for the next scrape.
func (d *Datapath) sumByPort(fronts []maps.FrontendStats) map[serviceKey]maps.Counters {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := make(map[maps.RevNATID]frontendSeen, len(fronts))
	sums := make(map[serviceKey]maps.Counters)
	for _, f := range fronts {
		seen := frontendSeen{key: parseName(f.Name), Counters: f.Counters}
		now[f.RevNATID] = seen
		sums[seen.key] = add(sums[seen.key], f.Counters)
	}
	for id, prev := range d.last {
		cur, ok := now[id]
		// Gone, reused for another Service, or recreated (counters
		// restarted): what it had counted stays with its port.
		if !ok || cur.key != prev.key || cur.Connects < prev.Connects || cur.Refused < prev.Refused {
			d.carried[prev.key] = add(d.carried[prev.key], prev.Counters)
		}
	}
	for key, c := range d.carried {
		if _, ok := sums[key]; !ok {
			// The Service port is gone: its series ends.
			delete(d.carried, key)
			continue
		}
		sums[key] = add(sums[key], c)
	}
	d.last = now
	return sums
}

// vipTotal sums the refusals of the cluster IPs in now, plus what the
// addresses gone since the last scrape had counted, and remembers now.
func (d *Datapath) vipTotal(now map[netip.Addr]uint64) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	for a, prev := range d.lastVIP {
		if cur, ok := now[a]; !ok || cur < prev {
			d.vipGone += prev
		}
	}
	d.lastVIP = now
	total := d.vipGone
	for _, n := range now {
		total += n
	}
	return total
}

func add(a, b maps.Counters) maps.Counters {
	return maps.Counters{Connects: a.Connects + b.Connects, Refused: a.Refused + b.Refused}
}

// Collect implements prometheus.Collector. A map that cannot be read is
// logged and left out, rather than failing the whole scrape.
func (d *Datapath) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	fronts, err := d.stats.FrontendStats()
	if err != nil {
		d.log.Warn("metrics: read frontend counters", "error", err)
		failed = 1
	}
	// A Service port has one frontend per cluster IP, NodePort address
	// and external address; users ask about the port.
	var sums map[serviceKey]maps.Counters
	if err == nil {
		sums = d.sumByPort(fronts)
	}
	for k, c := range sums {
		ch <- prometheus.MustNewConstMetric(d.connects, prometheus.CounterValue, float64(c.Connects), k.namespace, k.service, k.port)
		ch <- prometheus.MustNewConstMetric(d.refused, prometheus.CounterValue, float64(c.Refused), k.namespace, k.service, k.port)
	}
	if vips, err := d.stats.VIPRefusals(); err != nil {
		d.log.Warn("metrics: read cluster IP refusals", "error", err)
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(d.unknownPort, prometheus.CounterValue, float64(d.vipTotal(vips)))
	}
	if d.usage != nil {
		usage, err := d.usage()
		if err != nil {
			d.log.Warn("metrics: count map entries", "error", err)
			failed = 1
		}
		for _, u := range usage {
			ch <- prometheus.MustNewConstMetric(d.entries, prometheus.GaugeValue, float64(u.Entries), u.Map)
			ch <- prometheus.MustNewConstMetric(d.maxEntries, prometheus.GaugeValue, float64(u.MaxEntries), u.Map)
			if u.MaxEntries > 0 {
				ch <- prometheus.MustNewConstMetric(d.fill, prometheus.GaugeValue, float64(u.Entries)/float64(u.MaxEntries), u.Map)
			}
		}
	}
	for _, f := range d.features {
		v := 0.0
		if f.Available {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(d.feature, prometheus.GaugeValue, v, f.Name)
	}
	ch <- prometheus.MustNewConstMetric(d.scrapeErrors, prometheus.GaugeValue, failed)
}

// parseName splits "namespace/name:port" (port may be empty, for a
// Service's single unnamed port). A name that does not have that shape is
// kept whole as the service, so that nothing is dropped.
func parseName(s string) serviceKey {
	ns, rest, ok := strings.Cut(s, "/")
	if !ok {
		return serviceKey{service: s}
	}
	name, port, _ := strings.Cut(rest, ":")
	return serviceKey{namespace: ns, service: name, port: port}
}

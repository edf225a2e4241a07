package metrics

import (
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/ejection"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// Outcomes exports the connect outcomes the sock_ops program counts per
// backend (read when Prometheus scrapes) and the agent's outlier
// ejections.
type Outcomes struct {
	stats   maps.Stats
	ejected func() []ejection.Ejected
	log     *slog.Logger

	ejections                                      *prometheus.CounterVec
	open, established, failed, consecutive, outNow *prometheus.Desc
}

// NewOutcomes registers the outcome metrics with reg. ejected returns the
// backends ejected now (ejection.Ejector.Ejected); nil when there is no
// ejector.
func NewOutcomes(reg prometheus.Registerer, stats maps.Stats, ejected func() []ejection.Ejected, log *slog.Logger) *Outcomes {
	be := []string{"backend"}
	o := &Outcomes{
		stats: stats, ejected: ejected, log: log,
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "outlier_ejections_total",
			Help: "Outlier ejections of a backend by a Service on this node (the Service whose connect failure decided it).",
		}, []string{"namespace", "service", "backend"}),
		open: prometheus.NewDesc(namespace+"_backend_open_connections",
			"TCP connections from this node that socklb sent to the backend and that are not closed yet (connecting ones included).", be, nil),
		established: prometheus.NewDesc(namespace+"_backend_established_connects_total",
			"TCP connects from this node to the backend that reached ESTABLISHED.", be, nil),
		failed: prometheus.NewDesc(namespace+"_backend_failed_connects_total",
			"TCP connects from this node to the backend that closed before ESTABLISHED: refused, timed out or given up.", be, nil),
		consecutive: prometheus.NewDesc(namespace+"_backend_consecutive_failed_connects",
			"Failed TCP connects to the backend since its last established one.", be, nil),
		outNow: prometheus.NewDesc(namespace+"_outlier_ejected_backends",
			"Backends that outlier ejection keeps out of the Service's frontends now.", []string{"namespace", "service"}, nil),
	}
	reg.MustRegister(o.ejections, o)
	return o
}

// Ejection counts one ejection of b by svc.
func (o *Outcomes) Ejection(svc types.NamespacedName, b lb.Backend) {
	o.ejections.WithLabelValues(svc.Namespace, svc.Name, b.String()).Inc()
}

// Describe implements prometheus.Collector.
func (o *Outcomes) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{o.open, o.established, o.failed, o.consecutive, o.outNow} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A map that cannot be read is
// logged and its series left out.
func (o *Outcomes) Collect(ch chan<- prometheus.Metric) {
	if o.ejected != nil {
		per := map[types.NamespacedName]int{}
		for _, e := range o.ejected() {
			for _, s := range e.Services {
				per[s]++
			}
		}
		for s, n := range per {
			ch <- prometheus.MustNewConstMetric(o.outNow, prometheus.GaugeValue, float64(n), s.Namespace, s.Name)
		}
	}
	stats, err := o.stats.BackendStats()
	if err != nil {
		o.log.Warn("metrics: read backend outcomes", "error", err)
		return
	}
	if len(stats) == 0 {
		return
	}
	addrs, err := o.stats.Backends()
	if err != nil {
		o.log.Warn("metrics: read backends", "error", err)
		return
	}
	for id, st := range stats {
		b, ok := addrs[id]
		if !ok {
			continue // deleted since: its series ends
		}
		// As the ejection counter names it: outcomes are TCP only.
		name := netip.AddrPortFrom(b.Addr, b.Port).String()
		ch <- prometheus.MustNewConstMetric(o.open, prometheus.GaugeValue, float64(max(st.Open, 0)), name)
		ch <- prometheus.MustNewConstMetric(o.established, prometheus.CounterValue, float64(st.Established), name)
		ch <- prometheus.MustNewConstMetric(o.failed, prometheus.CounterValue, float64(st.Failed), name)
		ch <- prometheus.MustNewConstMetric(o.consecutive, prometheus.GaugeValue, float64(st.Consecutive), name)
	}
}

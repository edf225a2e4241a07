package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/metrics"
)

// newRegistry holds every metric the agent exports: the Go runtime's, the
// process's, the syncs', and the datapath's, read from dp's maps at scrape
// time.
func newRegistry(dp *loader.Datapath, log *slog.Logger) (*prometheus.Registry, *metrics.Sync) {
	reg := prometheus.NewRegistry()
	syncMetrics := metrics.NewSync(reg)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewDatapath(maps.NewStats(&dp.Maps), func() ([]maps.Usage, error) { return maps.MapUsage(&dp.Maps) },
			dp.Features, log),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "socklb_build_info", Help: "Always 1; the agent's version is a label.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
	)
	return reg, syncMetrics
}

// metricsHandler serves reg on /metrics.
func metricsHandler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		// Two scrapes at once would walk the maps twice for nothing.
		MaxRequestsInFlight: 1,
	}))
	return mux
}

// pprofHandler serves Go's profiles under /debug/pprof/, on a mux of its
// own: the package's init registers them on http.DefaultServeMux, which
// the agent does not serve.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// serveHTTP serves h on addr until ctx is done; what names the endpoint
// in logs and errors.
func serveHTTP(ctx context.Context, what, addr string, h http.Handler, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s endpoint: %w", what, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info(what+" endpoint listening", "addr", l.Addr().String())
	err = srv.Serve(l)
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s endpoint: %w", what, err)
	}
	// Serve returns as soon as Shutdown starts; a scrape may still be
	// reading the maps, which the caller closes once we return.
	<-shutDown
	return nil
}

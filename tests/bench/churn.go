package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The churn phase and the idle phase: what a peer costs while endpoints
// keep changing, and while nothing changes at all.

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture that Kubernetes runs on).
const clockTicks = 100

// cpuSeconds is the CPU time pid and the children it waited for (kube-
// proxy's iptables-restore and nft) used so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseCPUSeconds(string(b))
}

// parseCPUSeconds reads utime, stime, cutime and cstime (fields 14 to 17)
// from a /proc/<pid>/stat line; the command name, field 2, may hold
// spaces and parentheses, so the fields are counted after its last ')'.
func parseCPUSeconds(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command name", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 15 {
		return 0, fmt.Errorf("stat %q: %d fields after the name, want at least 15", stat, len(f))
	}
	var ticks float64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat %q: %w", stat, err)
		}
		ticks += float64(n)
	}
	return ticks / clockTicks, nil
}

// churn updates random EndpointSlices of the first n Services at
// cfg.churnRate per second for cfg.churnFor (each a random subset of the
// pods: endpoints added and removed), while a prober measures the change
// latency as changeLatency does, on Services the churn leaves alone (its
// updates, a few per second, come on top of the churn's); it records the
// CPU that pid used meanwhile.
func (w *world) churn(ctx context.Context, row *Row, pid int, n int, pprofAddr string) {
	probes := min(20, n/10) // Services 0..probes-1 are the prober's
	if probes < 1 || n-probes < 1 {
		w.tb.Fatalf("churn needs at least 11 Services, not %d", n)
	}
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		w.tb.Fatalf("cpu of pid %d: %v", pid, err)
	}
	start := time.Now()
	end := start.Add(w.cfg.churnFor)
	profiled := w.profileCPU(ctx, pprofAddr, w.cfg.churnFor, fmt.Sprintf("churn-socklb-%d.pprof", n))
	defer profiled()
	var wg sync.WaitGroup
	var churned, probed, failures int
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(w.cfg.churnRate))
		defer tick.Stop()
		rng := rand.New(rand.NewPCG(uint64(n), 15))
		for time.Now().Before(end) && ctx.Err() == nil {
			<-tick.C
			idx := probes + rng.IntN(n-probes)
			var pods []string
			for _, p := range w.pods {
				if rng.IntN(2) == 0 {
					pods = append(pods, p)
				}
			}
			if len(pods) == 0 {
				pods = w.pods[:1]
			}
			if err := w.setEndpoints(ctx, idx, pods); err != nil {
				failures++
				continue
			}
			churned++
		}
	}()
	var took []time.Duration
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		idx := i % probes
		for _, toMarker := range []bool{true, false} {
			d, err := w.probeChange(ctx, idx, toMarker)
			if err != nil {
				w.tb.Fatalf("churn probe: %v", err)
			}
			took = append(took, d)
			probed++
			// Probes 150 ms apart, as in changeLatency: a peer that
			// applies them at once is not handed more updates than one
			// that waits for its sync interval.
			select {
			case <-ctx.Done():
			case <-time.After(changeGap):
			}
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		w.tb.Fatalf("cpu of pid %d: %v", pid, err)
	}
	slices.Sort(took)
	row.ChurnUpdatesPerSec = float64(churned) / elapsed.Seconds()
	row.ChurnProbes = probed
	row.ChurnSeconds = elapsed.Seconds()
	row.ChurnCPUSec = cpu1 - cpu0
	row.ChurnFailed = failures
	if len(took) > 0 {
		row.ChurnChangeP50Ms = ms(took[len(took)/2])
		row.ChurnChangeP99Ms = ms(took[len(took)*99/100])
	}
	w.log.Info("churn done", "services", n, "updates_per_s", row.ChurnUpdatesPerSec, "cpu_s", row.ChurnCPUSec,
		"probes", len(took), "failed_updates", failures)
}

// setEndpoints makes pods the endpoints of Service idx.
func (w *world) setEndpoints(ctx context.Context, idx int, pods []string) error {
	sl := w.slices[idx].DeepCopy()
	sl.Endpoints = slice("", pods, 0).Endpoints
	updated, err := w.client.DiscoveryV1().EndpointSlices(benchNS).Update(ctx, sl, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update endpointslice of service %d: %w", idx, err)
	}
	w.slices[idx] = updated
	return nil
}

// probeChange moves Service idx to the marker pod alone (or back to every
// pod) and returns the time from the API server accepting the change to
// the first connect that shows it.
func (w *world) probeChange(ctx context.Context, idx int, toMarker bool) (time.Duration, error) {
	pods := w.pods
	if toMarker {
		pods = []string{markerPod}
	}
	if err := w.setEndpoints(ctx, idx, pods); err != nil {
		return 0, err
	}
	accepted := time.Now()
	for {
		name, err := askOnce(w.c.NS, w.vips[idx], time.Second)
		if err == nil && (name == "marker") == toMarker {
			return time.Since(accepted), nil
		}
		if time.Since(accepted) > time.Minute {
			return 0, fmt.Errorf("endpoint change on %s not applied after a minute", w.vips[idx])
		}
	}
}

// idle records the CPU pid uses over cfg.idleFor with nothing changing,
// as a percentage of one core.
func (w *world) idle(ctx context.Context, row *Row, pid int, pprofAddr string) {
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		w.tb.Fatalf("cpu of pid %d: %v", pid, err)
	}
	profiled := w.profileCPU(ctx, pprofAddr, w.cfg.idleFor, fmt.Sprintf("idle-socklb-%d.pprof", row.Services))
	defer profiled()
	start := time.Now()
	select {
	case <-ctx.Done():
		return
	case <-time.After(w.cfg.idleFor):
	}
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		w.tb.Fatalf("cpu of pid %d: %v", pid, err)
	}
	row.IdleSeconds = time.Since(start).Seconds()
	row.IdleCPUPercent = 100 * (cpu1 - cpu0) / row.IdleSeconds
	w.log.Info("idle done", "services", row.Services, "cpu_percent", row.IdleCPUPercent)
}

// profileCPU starts a CPU profile of the agent serving pprof at addr in
// the run's namespace, for d less a second, into cfg.profileDir/name;
// the function returned waits for it. Nothing when either is unset.
func (w *world) profileCPU(ctx context.Context, addr string, d time.Duration, name string) func() {
	secs := int((d - time.Second) / time.Second)
	if addr == "" || w.cfg.profileDir == "" || secs < 1 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.fetchProfile(ctx, addr, secs, filepath.Join(w.cfg.profileDir, name)); err != nil {
			w.log.Error("cpu profile", "error", err)
			return
		}
		w.log.Info("cpu profile written", "path", filepath.Join(w.cfg.profileDir, name))
	}()
	return func() { <-done }
}

func (w *world) fetchProfile(ctx context.Context, addr string, secs int, path string) error {
	client := &http.Client{Transport: &http.Transport{DialContext: w.c.NS.Dial}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}

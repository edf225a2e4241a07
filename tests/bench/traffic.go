package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/internal/sandbox"
)

// The traffic of a measurement: connects, bulk transfers and endpoint
// changes against the peer that serves the Services now.

// waitServing waits until a sample of the targets (and the last one)
// answer: the peer has programmed the services.
func (w *world) waitServing(targets []string, timeout time.Duration) {
	sample := []string{targets[len(targets)-1], targets[0]}
	for range 20 {
		sample = append(sample, targets[rand.IntN(len(targets))])
	}
	deadline := time.Now().Add(timeout)
	for i, t := range sample {
		for {
			if _, err := askOnce(w.c.NS, t, 300*time.Millisecond); err == nil {
				break
			}
			if time.Now().After(deadline) {
				// How far the peer got: those not asked yet are asked once.
				answered := i
				for _, u := range sample[i+1:] {
					if _, err := askOnce(w.c.NS, u, 300*time.Millisecond); err == nil {
						answered++
					}
				}
				w.tb.Fatalf("%d of %d sampled Services answered within %s (%s did not)", answered, len(sample), timeout, t)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func askOnce(ns *sandbox.Netns, addr string, timeout time.Duration) (string, error) {
	var name string
	err := ns.Do(func() error {
		var err error
		name, err = request(&net.Dialer{Timeout: timeout}, addr)
		return err
	})
	return name, err
}

// request is one short connection: connect, a small request, the
// response line, close.
func request(d *net.Dialer, addr string) (string, error) {
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// dataPath measures short connections to random targets with the
// configured number of parallel clients, then one bulk transfer.
func (w *world) dataPath(row *Row, targets []string, bulk string) {
	var (
		mu     sync.Mutex
		lat    []time.Duration
		failed int
		wg     sync.WaitGroup
	)
	end := time.Now().Add(w.cfg.duration)
	for range w.cfg.parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var bad int
			// One thread in the namespace for the whole run, so that no
			// setns is counted in the latency.
			_ = w.c.NS.Do(func() error {
				d := &net.Dialer{Timeout: 2 * time.Second}
				for time.Now().Before(end) {
					t0 := time.Now()
					if _, err := request(d, targets[rand.IntN(len(targets))]); err != nil {
						bad++
						continue
					}
					mine = append(mine, time.Since(t0))
				}
				return nil
			})
			mu.Lock()
			lat = append(lat, mine...)
			failed += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	row.Failed = failed
	if len(lat) > 0 {
		row.ConnPerSec = float64(len(lat)) / w.cfg.duration.Seconds()
		row.P50us = us(lat[len(lat)/2])
		row.P99us = us(lat[len(lat)*99/100])
	}
	row.BulkMBps = w.bulkThroughput(bulk)
}

func (w *world) bulkThroughput(addr string) float64 {
	var mbps float64
	err := w.c.NS.Do(func() error {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		start := time.Now()
		for sent := int64(0); sent < w.cfg.bulkBytes; sent += int64(len(buf)) {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
		_ = c.(*net.TCPConn).CloseWrite()
		ack, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		got, _ := strconv.ParseInt(strings.TrimSpace(ack), 10, 64)
		if got < w.cfg.bulkBytes {
			return fmt.Errorf("sink got %d of %d bytes", got, w.cfg.bulkBytes)
		}
		mbps = float64(got) / (1 << 20) / time.Since(start).Seconds()
		return nil
	})
	if err != nil {
		w.log.Error("bulk transfer", "error", err)
	}
	return mbps
}

// changeLatency changes endpoints of random services and measures the
// time from the API server accepting the change to the first connect that
// shows it: to the marker pod alone, then back to every pod.
func (w *world) changeLatency(ctx context.Context, row *Row) {
	var took []time.Duration
	start := time.Now()
	for i := 0; i < w.cfg.changes; i += 2 {
		// A peer that needs seconds per change (kube-proxy at 100 000
		// Services) would hold the run for an hour: past the budget, the
		// changes measured so far (at least ten) stand for it.
		if len(took) >= 10 && time.Since(start) > changeBudget {
			w.log.Info("change phase out of time", "peer", row.Peer, "services", row.Services,
				"changes", len(took), "budget", changeBudget)
			break
		}
		idx := rand.IntN(len(w.vips))
		if row.Services < len(w.vips) {
			idx = rand.IntN(row.Services)
		}
		for _, toMarker := range []bool{true, false} {
			pods := w.pods
			if toMarker {
				pods = []string{markerPod}
			}
			sl := w.slices[idx]
			sl.Endpoints = slice("", pods, 0).Endpoints
			updated, err := w.client.DiscoveryV1().EndpointSlices(benchNS).Update(ctx, sl, metav1.UpdateOptions{})
			if err != nil {
				w.tb.Fatalf("update endpointslice: %v", err)
			}
			w.slices[idx] = updated
			accepted := time.Now()
			for {
				name, err := askOnce(w.c.NS, w.vips[idx], time.Second)
				if err == nil && (name == "marker") == toMarker {
					break
				}
				if time.Since(accepted) > time.Minute {
					w.tb.Fatalf("endpoint change on %s not applied after a minute", w.vips[idx])
				}
			}
			took = append(took, time.Since(accepted))
			// Each change is measured on its own, not queued behind the
			// previous one in a peer's sync rate limit.
			time.Sleep(changeGap)
		}
	}
	slices.Sort(took)
	row.Changes = len(took)
	if len(took) > 0 {
		row.ChangeP50Ms = ms(took[len(took)/2])
		row.ChangeP99Ms = ms(took[len(took)*99/100])
	}
}

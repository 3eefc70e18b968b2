package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// noopResult is the steady-state check-in throughput of nodes that hold nothing.
type noopResult struct {
	nodes, clients int
	duration       time.Duration
	checkins       int
	failures       int
	latencies      []time.Duration // sorted
	apiRequests    map[string]int  // made during the measured window, by verb and resource

	// The paced run: the same clients together send rate check-ins per second, each
	// at its own fixed schedule; a latency counts from when the request was due, so
	// that a slow answer also counts against the requests it delayed.
	rate          float64
	pacedDuration time.Duration
	paced         []time.Duration // sorted
	pacedFailures int
}

// benchNoop serves the FleetLock handler of a Lock over loopback (httptest) and has
// clients goroutines send steady-state for random nodes of s, which hold nothing, as
// fast as they can for d after a warm-up; it counts the API requests the Lock's client
// makes meanwhile. Then, if rate > 0, the same clients send rate check-ins per second
// in all, for d again.
func benchNoop(ctx context.Context, env *controlplane.Env, s *nodeSet, clients int, d time.Duration, rate float64) (noopResult, error) {
	res := noopResult{nodes: len(s.names), clients: clients, duration: d}
	cfg, counter := env.CountingConfig()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return res, err
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	l, err := lock.New(client, &locktest.Drained{}, lock.Options{})
	if err != nil {
		return res, err
	}
	if err := l.Start(lctx); err != nil {
		return res, err
	}
	srv := httptest.NewServer(fleetlock.NewHandler(l, fleetlock.Options{}))
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConns: clients, MaxIdleConnsPerHost: clients, DisableCompression: true,
	}}
	defer hc.CloseIdleConnections()
	fl := fleetlock.Client{BaseURL: srv.URL + "/", HTTPClient: hc}

	// One pass over every node first: warms the connections and proves every ID
	// resolves (a 2xx for each).
	if err := forEach(clients, len(s.ids), func(i int) error {
		resp, err := fl.SteadyState(ctx, fleetlock.ClientParams{ID: s.ids[i], Group: "default"})
		if err == nil && !resp.OK() {
			err = fmt.Errorf("steady-state of %s: %d %s: %s", s.names[i], resp.StatusCode, resp.Reply.Kind, resp.Reply.Value)
		}
		return err
	}); err != nil {
		return res, err
	}

	before := counter.Snapshot()
	start := time.Now()
	deadline := start.Add(d)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			var lat []time.Duration
			failed := 0
			for {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				id := s.ids[rand.N(len(s.ids))]
				resp, err := fl.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
				lat = append(lat, time.Since(t0))
				if err != nil || !resp.OK() {
					failed++
				}
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			res.failures += failed
			mu.Unlock()
		})
	}
	wg.Wait()
	res.duration = time.Since(start)
	after := counter.Snapshot()
	res.apiRequests = map[string]int{}
	for k, v := range after {
		if v -= before[k]; v != 0 {
			res.apiRequests[k] = v
		}
	}
	res.checkins = len(res.latencies)
	slices.Sort(res.latencies)

	if rate <= 0 {
		return res, nil
	}
	res.rate = rate
	interval := time.Duration(float64(clients) / rate * float64(time.Second))
	start = time.Now()
	deadline = start.Add(d)
	for c := range clients {
		wg.Go(func() {
			var lat []time.Duration
			failed := 0
			// Each client starts at its own offset, so the requests are spread evenly.
			due := start.Add(interval * time.Duration(c) / time.Duration(clients))
			for due.Before(deadline) {
				time.Sleep(time.Until(due))
				id := s.ids[rand.N(len(s.ids))]
				resp, err := fl.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
				lat = append(lat, time.Since(due))
				if err != nil || !resp.OK() {
					failed++
				}
				due = due.Add(interval)
			}
			mu.Lock()
			res.paced = append(res.paced, lat...)
			res.pacedFailures += failed
			mu.Unlock()
		})
	}
	wg.Wait()
	res.pacedDuration = time.Since(start)
	slices.Sort(res.paced)
	return res, nil
}

// forEach runs fn(0..n-1) on workers goroutines and returns the first error.
func forEach(workers, n int, fn func(i int) error) error {
	var mu sync.Mutex
	var first error
	next := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

func (r noopResult) quantile(q float64) time.Duration { return quantile(r.latencies, q) }

// quantile returns the q-quantile of sorted.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// perCheckin splits the API requests made during the run into those that scale with
// check-ins and the periodic ones (the Lock's /readyz health probe, when there is one).
func (r noopResult) perCheckin() (requests int, periodic []string) {
	keys := make([]string, 0, len(r.apiRequests))
	for k := range r.apiRequests {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.Contains(k, "readyz") || strings.Contains(k, "healthz") || strings.Contains(k, "livez") {
			periodic = append(periodic, fmt.Sprintf("%s: %d", k, r.apiRequests[k]))
			continue
		}
		requests += r.apiRequests[k]
	}
	return requests, periodic
}

func (r noopResult) print(p *printer) {
	p.sectionf("Steady-state no-op check-ins: %d cached nodes, %d concurrent clients, loopback HTTP, %s", r.nodes, r.clients, r.duration.Round(time.Millisecond))
	p.linef("saturated: every client sends its next check-in as soon as the last is answered")
	p.linef("check-ins          %d (%d failed)", r.checkins, r.failures)
	p.linef("throughput         %.0f check-ins/s", float64(r.checkins)/r.duration.Seconds())
	p.linef("latency            %s", latencies(r.latencies))
	p.linef("(with %d requests always in flight, mean latency = %d / throughput = %s: queueing for the CPU)",
		r.clients, r.clients, us(time.Duration(float64(r.clients)/(float64(r.checkins)/r.duration.Seconds())*float64(time.Second))))
	if r.rate > 0 {
		p.linef("paced: %.0f check-ins/s in all from the %d clients, for %s (a real fleet of %d nodes polling every 300s sends %.0f/s)",
			r.rate, r.clients, r.pacedDuration.Round(time.Millisecond), r.nodes, float64(r.nodes)/300)
		p.linef("check-ins          %d (%d failed), %.0f/s achieved", len(r.paced), r.pacedFailures, float64(len(r.paced))/r.pacedDuration.Seconds())
		p.linef("latency            %s (from when each request was due)", latencies(r.paced))
	}
	n, periodic := r.perCheckin()
	p.linef("API requests       %d during the run: %.4f per check-in", n, float64(n)/float64(max(1, r.checkins)))
	if len(periodic) > 0 {
		p.linef("periodic requests  %s (time-driven, not per check-in)", strings.Join(periodic, ", "))
	}
}

func latencies(sorted []time.Duration) string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s", us(quantile(sorted, 0.50)), us(quantile(sorted, 0.90)),
		us(quantile(sorted, 0.99)), us(quantile(sorted, 0.999)), us(quantile(sorted, 1)))
}

func us(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

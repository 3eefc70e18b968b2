package main

import (
	"context"
	"fmt"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/lock"
)

// rolloutConfig is one rollout of the fleet simulator.
type rolloutConfig struct {
	nodes, slots     int
	poll             time.Duration
	jitter           float64
	drain, downtime  time.Duration
	wait             time.Duration // reboot-manager --wait
	replicas         int
	rebootManagerBin string
	// inProcess serves from this process (the lock, the drainer and the FleetLock
	// handler wired as cmd/reboot-manager wires them) instead of the binary, with a
	// client limited to qps and burst (0: client-go's defaults, 5 and 10; the binary
	// sets 50 and 100), and counts its API requests.
	inProcess  bool
	qps, burst int
}

// rolloutResult is one rollout's outcome.
type rolloutResult struct {
	label    string
	cfg      rolloutConfig
	report   *fleetsim.Report
	makespan time.Duration
	// meanHold is the mean time a node held its slot: from taking it (the checker
	// sees Rebooting) to the release (steady-state answered 2xx): drain, reboot and
	// steady-state.
	meanHold, meanWait, meanDrain, meanReboot time.Duration
	requests                                  int
	// idle are the times the slot stood free between one holder's release and the
	// next one taking it (1 slot), in the order of the rollout.
	idle []time.Duration
	// apiRequests are the in-process server's API requests, by verb and resource.
	apiRequests map[string]int
}

// ideal is the makespan of a scheduler that wastes nothing: the group's hold times
// back to back, slots at a time.
func (r rolloutResult) ideal() time.Duration {
	return time.Duration(float64(r.meanHold) * float64(r.cfg.nodes) / float64(r.cfg.slots))
}

// nominal is the ideal computed from the configured drain and reboot times alone.
func (r rolloutResult) nominal() time.Duration {
	return time.Duration(float64(r.cfg.drain+r.cfg.downtime) * float64(r.cfg.nodes) / float64(r.cfg.slots))
}

// benchRollout rolls an update over a fresh simulated fleet behind the reboot-manager
// binary, and deletes the fleet afterwards.
func benchRollout(ctx context.Context, env *controlplane.Env, label, name string, c rolloutConfig, log func(string, ...any)) (rolloutResult, error) {
	res := rolloutResult{label: label, cfg: c}
	ns := "bench-" + name
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return res, err
	}
	defer func() {
		_ = env.Client.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns, metav1.DeleteOptions{})
	}()
	for { // pods cannot be created before the namespace's default ServiceAccount
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	var endpoints []string
	var counter *controlplane.RequestCounter
	if c.inProcess {
		cfg, cnt := env.CountingConfig()
		cfg.QPS, cfg.Burst = float32(c.qps), c.burst
		counter = cnt
		for range c.replicas {
			url, stop, err := startInProcess(ctx, cfg, c)
			if err != nil {
				return res, err
			}
			defer stop()
			endpoints = append(endpoints, url)
		}
	} else {
		args := []string{"--wait=" + c.wait.String(), "--log-format=text", "--log-level=warn", fmt.Sprintf("--group-slots=default=%d", c.slots)}
		for range c.replicas {
			logs := &fleetsim.LogBuffer{}
			s, err := fleetsim.StartServer(c.rebootManagerBin, env.Kubeconfig, logs, args...)
			if err != nil {
				return res, err
			}
			defer func() {
				if err := s.Stop(); err != nil {
					log("reboot-manager: %v\n%s", err, logs.String())
				}
			}()
			endpoints = append(endpoints, s.FleetLock)
		}
	}
	f, err := fleetsim.New(ctx, env.Client, env.Kubelet, fleetsim.Options{
		Name: name, Namespace: ns, Groups: []fleetsim.Group{{Name: "default", Nodes: c.nodes, Slots: c.slots}},
		Poll: c.poll, Jitter: c.jitter, Downtime: c.downtime, TerminationGracePeriod: c.drain,
		Endpoints: endpoints, Log: log,
	})
	if err != nil {
		return res, err
	}
	defer f.Delete(context.WithoutCancel(ctx))
	var before map[string]int
	if counter != nil {
		before = counter.Snapshot()
	}
	rep, err := f.Roll(ctx)
	if err != nil {
		return res, err
	}
	if counter != nil {
		res.apiRequests = map[string]int{}
		for k, v := range counter.Snapshot() {
			if v -= before[k]; v != 0 {
				res.apiRequests[k] = v
			}
		}
	}
	if c.slots == 1 {
		byLock := slices.Clone(rep.Nodes)
		slices.SortFunc(byLock, func(a, b fleetsim.NodeReport) int { return a.Locked.Compare(b.Locked) })
		for i := 1; i < len(byLock); i++ {
			res.idle = append(res.idle, byLock[i].Locked.Sub(byLock[i-1].Released))
		}
	}
	res.report = rep
	res.makespan = rep.Makespan()
	var hold, wait, drain, reboot time.Duration
	for _, n := range rep.Nodes {
		hold += n.Released.Sub(n.Locked)
		wait += n.Wait()
		drain += n.Drain()
		reboot += n.Reboot()
		res.requests += n.Requests
	}
	k := time.Duration(len(rep.Nodes))
	res.meanHold, res.meanWait, res.meanDrain, res.meanReboot = hold/k, wait/k, drain/k, reboot/k
	return res, nil
}

// print prints the rollout against ideal, the holding run's ideal.
func (r rolloutResult) print(p *printer, ideal time.Duration) {
	c := r.cfg
	server := "the reboot-manager binary"
	if c.inProcess {
		server = fmt.Sprintf("in-process server, client QPS %d burst %d", c.qps, c.burst)
		if c.qps == 0 {
			server = "in-process server, client-go's default QPS 5 burst 10"
		}
	}
	p.line("%s, --wait=%s (%s):", r.label, c.wait, server)
	p.line("  makespan %.1fs = %.2fx ideal (%.1fs), %.2fx nominal (%.1fs)",
		r.makespan.Seconds(), r.makespan.Seconds()/ideal.Seconds(), ideal.Seconds(),
		r.makespan.Seconds()/r.nominal().Seconds(), r.nominal().Seconds())
	p.line("  per node, mean: wait %.1fs, drain %.1fs (slot taken to told to reboot), reboot+steady-state %.1fs; %d FleetLock requests in all; %d invariant violations",
		r.meanWait.Seconds(), r.meanDrain.Seconds(), r.meanReboot.Seconds(), r.requests, len(r.report.Violations))
	if len(r.idle) > 0 {
		sorted := slices.Clone(r.idle)
		slices.Sort(sorted)
		var total time.Duration
		for _, d := range sorted {
			total += d
		}
		p.line("  slot idle between a release and the next grant: total %.1fs over %d handovers; median %s, max %s; in order: %s",
			total.Seconds(), len(sorted), ms(quantile(sorted, 0.5)), ms(sorted[len(sorted)-1]), secs(r.idle))
	}
	if r.apiRequests != nil {
		keys := slices.Sorted(maps.Keys(r.apiRequests))
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.apiRequests[k]))
		}
		p.line("  API requests of the server: %s; %.1f patch nodes per node", strings.Join(parts, ", "),
			float64(r.apiRequests["patch nodes"])/float64(c.nodes))
	}
	for _, v := range r.report.Violations {
		p.line("  VIOLATION %s", v)
	}
}

func secs(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1f", d.Seconds())
	}
	return strings.Join(parts, " ")
}

// startInProcess serves FleetLock on loopback from this process, wired as
// cmd/reboot-manager wires it, and returns its base URL.
func startInProcess(ctx context.Context, cfg *rest.Config, c rolloutConfig) (string, func(), error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	drainer := evict.New(client, evict.Options{})
	var wg sync.WaitGroup
	wg.Go(func() { drainer.Run(ctx) })
	stop := func() {
		cancel()
		wg.Wait()
	}
	lk, err := lock.New(client, drainer, lock.Options{Policy: lock.FixedSlots(c.slots), Wait: c.wait})
	if err != nil {
		stop()
		return "", nil, err
	}
	if err := lk.Start(ctx); err != nil {
		stop()
		return "", nil, err
	}
	srv := httptest.NewServer(fleetlock.NewHandler(lk, fleetlock.Options{}))
	return srv.URL + "/", func() {
		cancel() // held requests answer at once
		srv.Close()
		stop()
	}, nil
}

package main

import (
	"context"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
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

// rolloutScenarios are the rollouts -rollouts chooses from, in the order they run.
var rolloutScenarios = []string{"one-slot", "three-slots", "restarts", "behind-proxy", "poll-bound"}

// rolloutConfig is one rollout of the fleet simulator. Durations are as the rollout
// runs them, already scaled by -time-scale.
type rolloutConfig struct {
	nodes, slots, perSlot int
	poll                  time.Duration
	jitter                float64
	stage                 time.Duration // nodes stage their update at random within it
	drain, downtime       time.Duration
	wait                  time.Duration // reboot-manager --wait
	staleClaimAge         time.Duration // reboot-manager --stale-claim-age
	restartWhileWaiting   time.Duration // fleetsim.Options.RestartWhileWaiting
	replicas              int
	rebootManagerBin      string
	// inProcess serves from this process (the lock, the drainer and the FleetLock
	// handler wired as cmd/reboot-manager wires them) instead of the binary, with a
	// client limited to qps and burst (0: client-go's defaults, 5 and 10; the binary
	// sets 50 and 100), and counts its API requests.
	inProcess  bool
	qps, burst int
}

// scaled returns c with every real duration multiplied by k.
func (c rolloutConfig) scaled(k float64) rolloutConfig {
	for _, d := range []*time.Duration{&c.poll, &c.stage, &c.drain, &c.downtime, &c.wait, &c.staleClaimAge} {
		*d = time.Duration(float64(*d) * k)
	}
	return c
}

// rolloutResult is one rollout's outcome.
type rolloutResult struct {
	label string
	cfg   rolloutConfig
	// target is the makespan / ideal this rollout must stay under (0: none, a baseline).
	target   float64
	restarts int
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

// ratio is the makespan over the ideal.
func (r rolloutResult) ratio() float64 { return r.makespan.Seconds() / r.ideal().Seconds() }

// nominal is the ideal computed from the configured drain and reboot times alone.
func (r rolloutResult) nominal() time.Duration {
	return time.Duration(float64(r.cfg.drain+r.cfg.downtime) * float64(r.cfg.nodes) / float64(r.cfg.slots))
}

// runRollouts runs the chosen scenarios, every one at Zincati's real proportions
// scaled by -time-scale and with reboot-manager's shipped defaults unless flags say
// otherwise, and prints each against its own ideal.
func runRollouts(ctx context.Context, env *controlplane.Env, c config, p *printer) ([]rolloutResult, error) {
	rc := c.rollout
	p.sectionf("Rollouts at Zincati's proportions x %.2f: poll %s + %.0f%% jitter, updates staged within %s, drain %s, reboot %s, --wait %s",
		c.timeScale, rc.poll, rc.jitter*100, rc.stage, rc.drain, rc.downtime, rc.wait)
	p.linef("ideal = nodes/slots x the mean time a node held its slot in that rollout (drain + reboot + steady-state, measured);")
	p.linef("nominal = nodes/slots x (drain + reboot) as configured; makespan from the first node staging to the last release")
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	var out []rolloutResult
	// holdingIdeal is the 1-slot holding rollout's ideal, by nodes: the baselines'
	// own holds are longer (a poll per drain), so their own ideal flatters them.
	holdingIdeal := map[int]time.Duration{}
	for _, name := range c.scenarios {
		sc, label, target := rc, name, 0.0
		sc.slots, sc.replicas = 1, 1
		switch name {
		case "one-slot":
			label, target = "1 slot", 1.10
		case "three-slots":
			sc.slots, sc.replicas = 3, 2
			label, target = "3 slots, 2 replicas", 1.10
		case "restarts":
			// Every waiting node's Zincati restarts once within its first held request.
			sc.restartWhileWaiting = sc.wait
			label, target = "1 slot, every waiter's Zincati restarts once", 1.25
		case "behind-proxy":
			// A proxy that cuts idle requests after 60 s, and --wait set under it.
			sc.wait = time.Duration(float64(50*time.Second) * c.timeScale)
			label = "1 slot, --wait=50s behind a proxy that cuts idle requests at 60s"
		case "poll-bound":
			sc.wait = time.Millisecond // holding off: every answer at once
			label = "1 slot, holding off (poll-bound baseline)"
		}
		sc.nodes = sc.perSlot * sc.slots
		r, err := benchRollout(ctx, env, label, name, sc, logf)
		if err != nil {
			return out, fmt.Errorf("rollout %s: %w", name, err)
		}
		r.target = target
		r.print(p, r.ideal())
		if ref, ok := holdingIdeal[sc.nodes]; ok && (name == "poll-bound" || name == "behind-proxy") {
			p.linef("  against the 1-slot holding rollout's ideal (%.1fs): %.2fx", ref.Seconds(), r.makespan.Seconds()/ref.Seconds())
		}
		if name == "one-slot" {
			holdingIdeal[sc.nodes] = r.ideal()
		}
		if c.verbose {
			p.linef("%s", r.report.Summary())
		}
		out = append(out, r)
	}
	return out, nil
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
		args := []string{"--wait=" + c.wait.String(), "--stale-claim-age=" + c.staleClaimAge.String(),
			"--log-format=text", "--log-level=warn", fmt.Sprintf("--group-slots=default=%d", c.slots)}
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
		StageWithin: c.stage, RestartWhileWaiting: c.restartWhileWaiting,
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
		res.restarts += n.Restarts
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
	p.linef("%s: %d nodes, %d slot(s), %d replica(s), --wait=%s (%s):", r.label, c.nodes, c.slots, c.replicas, c.wait, server)
	p.linef("  makespan %.1fs = %.2fx ideal (%.1fs), %.2fx nominal (%.1fs)",
		r.makespan.Seconds(), r.makespan.Seconds()/ideal.Seconds(), ideal.Seconds(),
		r.makespan.Seconds()/r.nominal().Seconds(), r.nominal().Seconds())
	p.linef("  per node, mean: wait %.1fs, drain %.1fs (slot taken to told to reboot), reboot+steady-state %.1fs; %d FleetLock requests in all; %d Zincati restarts; %d invariant violations",
		r.meanWait.Seconds(), r.meanDrain.Seconds(), r.meanReboot.Seconds(), r.requests, r.restarts, len(r.report.Violations))
	if len(r.idle) > 0 {
		sorted := slices.Clone(r.idle)
		slices.Sort(sorted)
		var total time.Duration
		for _, d := range sorted {
			total += d
		}
		idle := 0
		for _, d := range sorted {
			if d > r.cfg.poll/2 {
				idle++
			}
		}
		p.linef("  slot idle between a release and the next grant: total %.1fs over %d handovers, %d of them idle over half a poll; median %s, max %s; in order: %s",
			total.Seconds(), len(sorted), idle, ms(quantile(sorted, 0.5)), ms(sorted[len(sorted)-1]), secs(r.idle))
	}
	if r.apiRequests != nil {
		keys := slices.Sorted(maps.Keys(r.apiRequests))
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.apiRequests[k]))
		}
		p.linef("  API requests of the server: %s; %.1f patch nodes per node", strings.Join(parts, ", "),
			float64(r.apiRequests["patch nodes"])/float64(c.nodes))
	}
	for _, v := range r.report.Violations {
		p.linef("  VIOLATION %s", v)
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
	lk, err := lock.New(client, drainer, lock.Options{Policy: lock.FixedSlots(c.slots), Wait: c.wait, StaleClaimAge: c.staleClaimAge})
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

// Command bench measures reboot-manager against a real control plane: how long a
// rollout takes with and without held requests, the throughput and latency of no-op
// steady-state check-ins, the memory of the node cache, and a queue of nodes that all
// ask at once. It prints the figures and their ratios, all measured in the same run;
// docs/performance.md explains them.
//
//	make bench                              # everything, full size (about 20 minutes)
//	make bench BENCH_FLAGS='-only=noop,memory -nodes=2000'
//	go run ./internal/bench -help
//
// It is not a test: nothing here fails on a slow machine, and make test does not run it.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
)

type config struct {
	only []string

	nodes, createWorkers int
	clients              int
	duration             time.Duration
	rate                 float64

	contentionNodes, contentionSlots int
	contentionWait, contentionHold   time.Duration

	holdsWaiters             []int
	holdsGroups, holdsRounds int

	rollout   rolloutConfig
	timeScale float64
	scenarios []string
	verbose   bool

	idle idleConfig
}

var benchmarks = []string{"memory", "noop", "idle", "contention", "holds", "rollout"}

func main() {
	var c config
	var only, scenarios, holdsWaiters string
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&only, "only", strings.Join(benchmarks, ","), "benchmarks to run, comma-separated: "+strings.Join(benchmarks, ", "))
	fs.IntVar(&c.nodes, "nodes", 5000, "memory, noop: realistic Nodes in the cluster")
	fs.IntVar(&c.createWorkers, "create-workers", 16, "requests in flight while creating nodes")
	fs.IntVar(&c.clients, "clients", 64, "noop: concurrent FleetLock clients")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "noop: how long the clients send steady-state, saturated then paced")
	fs.Float64Var(&c.rate, "rate", 2000, "noop: check-ins per second of the paced run (0: none)")
	fs.IntVar(&c.contentionNodes, "contention-nodes", 200, "contention: nodes asking at once")
	fs.IntVar(&c.contentionSlots, "contention-slots", 5, "contention: slots")
	fs.DurationVar(&c.contentionWait, "contention-wait", 2*time.Minute, "contention: lock.Options.Wait")
	fs.DurationVar(&c.contentionHold, "contention-hold", 500*time.Millisecond, "contention: how long a granted node holds before its steady-state")
	fs.StringVar(&holdsWaiters, "holds-waiters", "200,1000,2000", "holds: numbers of requests held at once, comma-separated, one run each")
	fs.IntVar(&c.holdsGroups, "holds-groups", 20, "holds: groups the waiters are spread over, 1 slot each")
	fs.IntVar(&c.holdsRounds, "holds-handovers", 40, "holds: handovers measured per run")
	fs.Float64Var(&c.timeScale, "time-scale", 0.1, "rollout: every real duration below is multiplied by this (0.1: a real 5-minute poll lasts 30 s)")
	fs.IntVar(&c.rollout.perSlot, "rollout-nodes-per-slot", 12, "rollout: nodes per slot of the group")
	fs.StringVar(&scenarios, "rollouts", strings.Join(rolloutScenarios, ","), "rollout: scenarios to run, comma-separated: "+strings.Join(rolloutScenarios, ", "))
	fs.DurationVar(&c.rollout.poll, "poll", 300*time.Second, "rollout: Zincati's poll period, real time (Zincati: 300 s plus -jitter)")
	fs.Float64Var(&c.rollout.jitter, "jitter", 0.1, "rollout: Zincati's poll jitter, a share of -poll")
	fs.DurationVar(&c.rollout.stage, "stage", 300*time.Second, "rollout: nodes stage their update at random within this, real time (Zincati checks for updates every 300 s)")
	fs.DurationVar(&c.rollout.drain, "drain", 60*time.Second, "rollout: how long an evicted pod takes to terminate (the drain), real time")
	fs.DurationVar(&c.rollout.downtime, "downtime", 120*time.Second, "rollout: how long a reboot keeps a node NotReady, real time")
	fs.DurationVar(&c.rollout.wait, "wait", lock.DefaultWait, "rollout: reboot-manager --wait, real time (default: the shipped default)")
	fs.DurationVar(&c.rollout.staleClaimAge, "stale-claim-age", lock.DefaultStaleClaimAge, "rollout: reboot-manager --stale-claim-age, real time (default: the shipped default)")
	fs.BoolVar(&c.verbose, "v", false, "rollout: also print each node's wait, drain, reboot and requests")
	fs.StringVar(&c.rollout.rebootManagerBin, "reboot-manager", "", "rollout, memory: the reboot-manager binary (default: build it)")
	fs.BoolVar(&c.rollout.inProcess, "in-process", false, "rollout: serve from this process (lock, drainer, handler as cmd/reboot-manager wires them) instead of the binary; counts API requests")
	fs.IntVar(&c.rollout.qps, "qps", 50, "rollout -in-process: the client's QPS limit, as cmd/reboot-manager sets it (0: client-go's default, 5)")
	fs.IntVar(&c.rollout.burst, "burst", 100, "rollout -in-process: the client's burst, as cmd/reboot-manager sets it (0: client-go's default, 10)")
	c.idle.flags(fs)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	_ = fs.Parse(os.Args[1:])
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	for o := range strings.SplitSeq(only, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		if !slices.Contains(benchmarks, o) {
			fmt.Fprintf(os.Stderr, "bench: unknown benchmark %q (have %s)\n", o, strings.Join(benchmarks, ", "))
			os.Exit(2)
		}
		c.only = append(c.only, o)
	}
	for o := range strings.SplitSeq(scenarios, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		if !slices.Contains(rolloutScenarios, o) {
			fmt.Fprintf(os.Stderr, "bench: unknown rollout %q (have %s)\n", o, strings.Join(rolloutScenarios, ", "))
			os.Exit(2)
		}
		c.scenarios = append(c.scenarios, o)
	}
	for w := range strings.SplitSeq(holdsWaiters, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench: -holds-waiters: %q is not a positive number\n", w)
			os.Exit(2)
		}
		c.holdsWaiters = append(c.holdsWaiters, n)
	}
	if c.timeScale <= 0 || c.timeScale > 1 {
		fmt.Fprintf(os.Stderr, "bench: -time-scale must be in (0, 1], got %v\n", c.timeScale)
		os.Exit(2)
	}
	c.rollout = c.rollout.scaled(c.timeScale)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func (c config) runs(name string) bool { return slices.Contains(c.only, name) }

func run(ctx context.Context, c config, out io.Writer) error {
	p := &printer{out: out}
	p.linef("reboot-manager benchmarks, %s", time.Now().UTC().Format(time.RFC3339))
	p.linef("machine: %d CPUs (GOMAXPROCS %d), %s, %s %s; load average before: %s", runtime.NumCPU(), runtime.GOMAXPROCS(0),
		memTotal(), runtime.Version(), runtime.GOARCH, loadAvg())

	if c.rollout.rebootManagerBin == "" && (c.runs("rollout") || c.runs("memory")) {
		dir, err := os.MkdirTemp("", "reboot-manager-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if c.rollout.rebootManagerBin, err = fleetsim.BuildServer(dir); err != nil {
			return err
		}
	}
	start := time.Now()
	env, err := controlplane.StartEnvWith(ctx, controlplane.EnvOptions{
		// An evicted pod terminates in -drain (its grace period is set to the same).
		Kubelet: simkubelet.Options{TerminationDelay: c.rollout.drain},
	})
	if err != nil {
		return err
	}
	defer env.Stop()
	p.linef("control plane started in %s", time.Since(start).Round(time.Millisecond))
	var sum summary

	if c.runs("memory") || c.runs("noop") || c.runs("idle") {
		var emptyRSS serverMemory
		if c.runs("memory") {
			if emptyRSS, err = measureServer(c.rollout.rebootManagerBin, env.Kubeconfig); err != nil {
				return err
			}
		}
		start := time.Now()
		s, err := createNodes(ctx, env.Client, "realistic", c.nodes, c.createWorkers, true)
		if err != nil {
			return err
		}
		size, managers, err := nodeJSONSize(ctx, env.Client, s.names[0])
		if err != nil {
			return err
		}
		p.linef("created %d realistic Nodes in %s with %d requests in flight: %.1f KiB of JSON each, %d managed-fields entries, 50 images",
			c.nodes, time.Since(start).Round(time.Millisecond), c.createWorkers, float64(size)/1024, managers)
		if c.runs("memory") {
			m, err := benchMemory(ctx, env.Client, c.nodes)
			if err != nil {
				return err
			}
			m.print(p)
			sum.memory = &m
			full, err := measureServer(c.rollout.rebootManagerBin, env.Kubeconfig)
			if err != nil {
				return err
			}
			p.linef("reboot-manager binary, whole process: RSS %.1f MiB (empty cluster: %.1f MiB), Go heap in use %.1f MiB (empty: %.1f MiB)",
				mib(full.rss), mib(emptyRSS.rss), mib(full.heapInuse), mib(emptyRSS.heapInuse))
		}
		if c.runs("noop") {
			n, err := benchNoop(ctx, env, s, c.clients, c.duration, c.rate)
			if err != nil {
				return err
			}
			n.print(p)
			sum.noop = &n
		}
		if c.runs("idle") {
			r, err := benchIdle(ctx, env, c.rollout.rebootManagerBin, s, c.idle)
			if err != nil {
				return err
			}
			r.print(p)
			sum.idle = &r
		}
		if err := deleteNodes(ctx, env.Client, s.set); err != nil {
			return err
		}
	}

	if c.runs("contention") {
		s, err := createNodes(ctx, env.Client, "contend", c.contentionNodes, c.createWorkers, false)
		if err != nil {
			return err
		}
		r, err := benchContention(ctx, env, s, c.contentionSlots, c.contentionWait, c.contentionHold)
		if err != nil {
			return err
		}
		r.print(p)
		sum.contention = &r
		if err := deleteNodes(ctx, env.Client, s.set); err != nil {
			return err
		}
	}

	if c.runs("holds") {
		var rs []holdsResult
		var failed []string
		for _, w := range c.holdsWaiters {
			r, err := benchHolds(ctx, env, w, c.holdsGroups, c.holdsRounds)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil { // a figure too: the lock could not keep up
				failed = append(failed, fmt.Sprintf("holds, %d waiters: %v", w, err))
				continue
			}
			rs = append(rs, r)
		}
		printHolds(p, rs)
		for _, f := range failed {
			p.linef("FAILED %s", f)
		}
	}

	if c.runs("rollout") {
		rs, err := runRollouts(ctx, env, c, p)
		if err != nil {
			return err
		}
		sum.rollouts = rs
	}
	if err := replaceSoak(ctx, c, env, p); err != nil {
		return err
	}
	p.linef("")
	p.linef("load average after: %s; total %s", loadAvg(), time.Since(start).Round(time.Second))
	sum.print(p)
	return nil
}

// summary holds what ran, for the targets.
type summary struct {
	memory     *memoryResult
	noop       *noopResult
	idle       *idleResult
	contention *contentionResult
	rollouts   []rolloutResult
}

func (s summary) print(p *printer) {
	p.sectionf("Targets")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	for _, r := range s.rollouts {
		if r.target == 0 {
			continue
		}
		x := r.ratio()
		p.linef("%-38s %.2fx ideal <= %.2fx: %s", "rollout, "+r.label, x, r.target, verdict(x <= r.target))
	}
	if r := s.noop; r != nil {
		n, _ := r.perCheckin()
		p.linef("no-op check-in API requests = 0        %d: %s", n, verdict(n == 0))
		p.linef("no-op check-in p99 < 5ms, saturated    %s: %s", us(r.quantile(0.99)), verdict(r.quantile(0.99) < 5*time.Millisecond))
		if r.rate > 0 {
			p99 := quantile(r.paced, 0.99)
			p.linef("no-op check-in p99 < 5ms, %5.0f/s      %s: %s", r.rate, us(p99), verdict(p99 < 5*time.Millisecond))
		}
	}
	if r := s.idle; r != nil {
		p.linef("idle check-ins >= 85%% of a no-op server  %.1f%%: %s", 100*r.ratio(), verdict(r.ratio() >= 0.85))
	}
	if r := s.memory; r != nil {
		p.linef("node cache < 80 MiB at %d nodes      %.1f MiB: %s", r.nodes, mib(r.stripped), verdict(mib(r.stripped) < 80))
	}
	if r := s.contention; r != nil {
		p.linef("contention (no target)                 %.1f patch nodes per grant, queue of %d drained in %s",
			float64(r.apiRequests["patch nodes"])/float64(max(1, len(r.order))), r.nodes, r.elapsed.Round(time.Millisecond))
	}
}

// printer writes the report.
type printer struct{ out io.Writer }

func (p *printer) sectionf(format string, args ...any) {
	fmt.Fprintf(p.out, "\n== "+format+"\n", args...)
}

func (p *printer) linef(format string, args ...any) {
	fmt.Fprintf(p.out, format+"\n", args...)
}

// serverMemory is what a reboot-manager process reports on /metrics.
type serverMemory struct{ rss, heapInuse uint64 }

// measureServer starts the reboot-manager binary, waits until its node cache has
// synced and two seconds more, and reads its memory from /metrics.
func measureServer(bin, kubeconfig string) (serverMemory, error) {
	var m serverMemory
	s, err := fleetsim.StartServer(bin, kubeconfig, nil, "--log-level=warn")
	if err != nil {
		return m, err
	}
	defer func() { _ = s.Stop() }()
	time.Sleep(2 * time.Second)
	text, err := s.Metrics()
	if err != nil {
		return m, err
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			m.rss = uint64(v)
		case "go_memstats_heap_inuse_bytes":
			m.heapInuse = uint64(v)
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("reboot-manager /metrics has no process_resident_memory_bytes")
	}
	return m, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return fmt.Sprintf("%.0f GiB RAM", kb/(1<<20))
		}
	}
	return "memory unknown"
}

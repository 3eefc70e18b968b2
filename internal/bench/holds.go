package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// holdsResult is what one size of the long-holds benchmark measured: waiters held
// requests open at once over groups, one slot each, and handovers one group at a time.
type holdsResult struct {
	waiters, groups, handovers int
	// rss is the process's resident memory with every request held, bytes, after
	// the garbage of the requests' start was returned to the system; heap is the
	// live heap then.
	rss, heap uint64
	// cpu is the process's CPU time (user + system) per handover.
	cpu time.Duration
	// latency is the mean time from a holder's release to its group's next grant.
	latency time.Duration
	// apiRequests are the Lock's API requests per handover; byKind splits them by
	// verb and resource ("patch nodes": the node writes).
	apiRequests float64
	byKind      map[string]float64
}

// benchHolds holds waiters pre-reboot requests open at once, spread over groups of
// one slot, in one in-process Lock, then frees one group's slot at a time handovers
// times and measures what each handover costs. A slot freed in one group should wake
// that group's first waiters only, so the cost per handover should not grow with the
// waiters of the other groups.
func benchHolds(ctx context.Context, env *controlplane.Env, waiters, groups, handovers int) (holdsResult, error) {
	res := holdsResult{waiters: waiters, groups: groups, handovers: handovers}
	set := fmt.Sprintf("holds%d", waiters)
	nodes := waiters + groups // each group's first node holds the slot
	s, err := createNodes(ctx, env.Client, set, nodes, 16, false)
	if err != nil {
		return res, err
	}
	defer func() { _ = deleteNodes(context.WithoutCancel(ctx), env.Client, set) }()
	cfg, counter := env.CountingConfig()
	cfg.QPS, cfg.Burst = 50, 100 // as cmd/reboot-manager sets them
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return res, err
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	l, err := lock.New(client, &locktest.Drained{}, lock.Options{Wait: 25 * time.Minute})
	if err != nil {
		return res, err
	}
	if err := l.Start(lctx); err != nil {
		return res, err
	}
	group := func(i int) string { return fmt.Sprintf("g%02d", i%groups) }
	params := func(i int) fleetlock.ClientParams { return fleetlock.ClientParams{ID: s.ids[i], Group: group(i)} }
	for i := range s.ids { // the cache must show every node
		for {
			if _, err := l.SteadyState(ctx, params(i)); err == nil {
				break
			} else if !errors.Is(err, fleetlock.ErrUnknownNode) {
				return res, fmt.Errorf("%s: %w", s.names[i], err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Nodes 0 .. groups-1 take their group's slot.
	for i := range groups {
		if err := l.PreReboot(ctx, params(i)); err != nil {
			return res, fmt.Errorf("first holder %s: %w", s.names[i], err)
		}
	}
	granted := make(chan int, nodes)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	// The waiters ask over time, as staged updates do (a paced start), not in one
	// instant: 2,000 claims at once each LIST every other claim, which measures the
	// start's herd, not the holds.
	pace := time.NewTicker(time.Second / holdsStartRate)
	defer pace.Stop()
	for i := groups; i < nodes; i++ {
		select {
		case <-pace.C:
		case <-ctx.Done():
			return res, ctx.Err()
		}
		wg.Go(func() {
			for lctx.Err() == nil {
				if err := l.PreReboot(lctx, params(i)); err == nil {
					granted <- i
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	// Let every request reach its wait: the claims are withdrawn and the queue quiet.
	if err := awaitQuiet(ctx, counter, 3*time.Second); err != nil {
		return res, err
	}
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.rss, res.heap = selfRSS(), ms.HeapAlloc
	holder := make([]int, groups)
	for g := range groups {
		holder[g] = g
	}
	before, cpu0 := counter.Snapshot(), cpuTime()
	var latency time.Duration
	for h := range handovers {
		g := h % groups
		start := time.Now()
		if err := rebootAndRelease(ctx, env.Client, l, s.names[holder[g]], params(holder[g])); err != nil {
			return res, err
		}
		select {
		case i := <-granted:
			if i%groups != g {
				return res, fmt.Errorf("a release in %s granted %s of %s", group(g), s.names[i], group(i))
			}
			holder[g] = i
		case <-time.After(time.Minute):
			return res, fmt.Errorf("no grant in %s within a minute of its release", group(g))
		case <-ctx.Done():
			return res, ctx.Err()
		}
		latency += time.Since(start)
	}
	res.cpu = (cpuTime() - cpu0) / time.Duration(handovers)
	res.latency = latency / time.Duration(handovers)
	total := 0
	res.byKind = map[string]float64{}
	for k, v := range counter.Snapshot() {
		if d := v - before[k]; d > 0 {
			total += d
			res.byKind[k] = float64(d) / float64(handovers)
		}
	}
	res.apiRequests = float64(total) / float64(handovers)
	return res, nil
}

// holdsStartRate is how many waiters start asking per second: each start costs its
// waiting marks, a claim, a LIST and a withdrawal, within the client's 50 requests a
// second.
const holdsStartRate = 10

// rebootAndRelease gives node a new boot ID, as its reboot would, and sends its
// steady-state until the slot is released.
func rebootAndRelease(ctx context.Context, client kubernetes.Interface, l *lock.Lock, node string, p fleetlock.ClientParams) error {
	patch := fmt.Sprintf(`{"status":{"nodeInfo":{"bootID":%q}}}`, simkubelet.RandomID())
	if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("reboot %s: %w", node, err)
	}
	for {
		released, err := l.SteadyState(ctx, p)
		if err == nil && released {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awaitQuiet waits until the counter has seen no write to a Node for quiet: the held
// requests have claimed and withdrawn. (Reads go on: the health probe every 2 s, the
// resumption of holders' drains every 10 s.)
func awaitQuiet(ctx context.Context, c *controlplane.RequestCounter, quiet time.Duration) error {
	last, since := -1, time.Now()
	for time.Since(since) < quiet {
		n := c.Snapshot()["patch nodes"]
		if n != last {
			last, since = n, time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// cpuTime is this process's CPU time, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// selfRSS is this process's resident memory in bytes, from /proc/self/status.
func selfRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func printHolds(p *printer, rs []holdsResult) {
	if len(rs) == 0 {
		return
	}
	p.sectionf("Long holds: requests held open at once over %d groups of 1 slot, %d handovers each, in-process Lock", rs[0].groups, rs[0].handovers)
	p.linef("waiters start %d a second; RSS after the start's garbage is returned (debug.FreeOSMemory), with the live heap then", holdsStartRate)
	p.linef("%8s %10s %10s %16s %16s %18s", "waiters", "RSS MiB", "heap MiB", "CPU/handover", "release->grant", "API req/handover")
	for _, r := range rs {
		p.linef("%8d %10.1f %10.1f %16s %16s %18.1f", r.waiters, mib(r.rss), mib(r.heap), r.cpu.Round(10*time.Microsecond), ms(r.latency), r.apiRequests)
	}
	for _, r := range rs {
		kinds := slices.Sorted(maps.Keys(r.byKind))
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s %.1f", k, r.byKind[k])
		}
		p.linef("%d waiters, API requests per handover: %s", r.waiters, strings.Join(parts, ", "))
	}
	first, last := rs[0], rs[len(rs)-1]
	if first.cpu > 0 && first.apiRequests > 0 {
		p.linef("%d waiters / %d waiters: CPU per handover %.2fx, API requests per handover %.2fx",
			last.waiters, first.waiters, float64(last.cpu)/float64(first.cpu), last.apiRequests/first.apiRequests)
	}
}

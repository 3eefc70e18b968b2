package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// contentionResult is how a queue of nodes that all ask at once drains.
type contentionResult struct {
	nodes, slots int
	wait, hold   time.Duration
	elapsed      time.Duration
	mostHolding  int            // most nodes between grant and release at once, as the clients saw it
	notYet       int            // "not yet" answers (held requests that timed out), retried at once
	failures     int            // other errors, retried after a pause
	apiRequests  map[string]int // made by the Lock's client during the run
	order        []string       // nodes in the order they were granted
	grantGaps    []time.Duration
}

// benchContention has every node of s ask for the lock at once, through one Lock
// with the given number of slots and an instant drain. A granted node holds for hold, then sends
// steady-state; a request answered "not yet" asks again at once. It ends when every
// node has been granted and has released.
func benchContention(ctx context.Context, env *controlplane.Env, s *nodeSet, slots int, wait, hold time.Duration) (contentionResult, error) {
	res := contentionResult{nodes: len(s.names), slots: slots, wait: wait, hold: hold}
	cfg, counter := env.CountingConfig()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return res, err
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	l, err := lock.New(client, &locktest.Drained{}, lock.Options{Policy: lock.FixedSlots(slots), Wait: wait})
	if err != nil {
		return res, err
	}
	if err := l.Start(lctx); err != nil {
		return res, err
	}
	// The cache must show every node before they ask.
	for i, id := range s.ids {
		for {
			if _, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"}); err == nil {
				break
			} else if !errors.Is(err, fleetlock.ErrUnknownNode) {
				return res, fmt.Errorf("%s: %w", s.names[i], err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	var mu sync.Mutex
	holding := 0
	var lastGrant time.Time
	before := counter.Snapshot()
	start := time.Now()
	lastGrant = start
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for i := range s.names {
		p := fleetlock.ClientParams{ID: s.ids[i], Group: "default"}
		wg.Go(func() {
			<-begin
			for ctx.Err() == nil {
				err := l.PreReboot(ctx, p)
				if err != nil {
					mu.Lock()
					if errors.Is(err, fleetlock.ErrLockHeld) || errors.Is(err, fleetlock.ErrDrainInProgress) {
						res.notYet++
						mu.Unlock()
						continue
					}
					res.failures++
					mu.Unlock()
					time.Sleep(100 * time.Millisecond)
					continue
				}
				mu.Lock()
				now := time.Now()
				holding++
				res.mostHolding = max(res.mostHolding, holding)
				res.order = append(res.order, s.names[i])
				res.grantGaps = append(res.grantGaps, now.Sub(lastGrant))
				lastGrant = now
				mu.Unlock()
				time.Sleep(hold)
				for ctx.Err() == nil {
					mu.Lock()
					holding-- // counted down before the release: never over-counted
					mu.Unlock()
					released, err := l.SteadyState(ctx, p)
					if err == nil && released {
						return
					}
					mu.Lock()
					holding++
					res.failures++
					mu.Unlock()
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	close(begin)
	wg.Wait()
	res.elapsed = time.Since(start)
	after := counter.Snapshot()
	res.apiRequests = map[string]int{}
	for k, v := range after {
		if v -= before[k]; v != 0 {
			res.apiRequests[k] = v
		}
	}
	return res, ctx.Err()
}

// inversions counts the pairs granted against alphabetical order.
func inversions(order []string) int {
	n := 0
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			if order[j] < order[i] {
				n++
			}
		}
	}
	return n
}

func (r contentionResult) print(p *printer) {
	grants := len(r.order)
	p.sectionf("Contention: %d nodes ask at once, %d slots, held requests (Wait %s), instant drain, hold %s", r.nodes, r.slots, r.wait, r.hold)
	ideal := time.Duration(float64(r.hold) * float64(r.nodes) / float64(r.slots))
	p.linef("queue drained in   %s (every node granted and released): %.1f grants/s; nodes/slots x hold = %s, so %s of lock overhead per grant per slot",
		r.elapsed.Round(time.Millisecond), float64(grants)/r.elapsed.Seconds(), ideal,
		ms(time.Duration(float64(r.elapsed-ideal)*float64(r.slots)/float64(max(1, grants)))))
	p.linef("most holding       %d (slots %d)", r.mostHolding, r.slots)
	p.linef("not-yet answers    %d (held requests that timed out, asked again at once); other errors %d", r.notYet, r.failures)
	keys := make([]string, 0, len(r.apiRequests))
	total := 0
	for k, v := range r.apiRequests {
		keys = append(keys, k)
		total += v
	}
	sort.Strings(keys)
	p.linef("API writes/grant   %.1f patch nodes per grant (%d in all; the minimum is 3: claim, promote, release)",
		float64(r.apiRequests["patch nodes"])/float64(max(1, grants)), r.apiRequests["patch nodes"])
	for _, k := range keys {
		p.linef("  %-16s %7d  %.1f per grant", k, r.apiRequests[k], float64(r.apiRequests[k])/float64(max(1, grants)))
	}
	p.linef("  %-16s %7d  %.1f per grant", "all requests", total, float64(total)/float64(max(1, grants)))
	gaps := append([]time.Duration(nil), r.grantGaps...)
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	if len(gaps) > 0 {
		p.linef("time between grants p50 %s  p90 %s  max %s", ms(gaps[len(gaps)/2]), ms(gaps[len(gaps)*9/10]), ms(gaps[len(gaps)-1]))
	}
	pairs := grants * (grants - 1) / 2
	p.linef("grant order        %d of %d pairs against alphabetical order (0: strictly alphabetical)", inversions(r.order), pairs)
	if len(r.order) > 12 {
		p.linef("first grants       %v ...", r.order[:12])
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

package evict

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"
)

// drain is one node's drain: a state machine whose phase (a Phase) changes only in
// setPhase, driven by run. Its run goroutine owns every field below "owned by run";
// the progress is guarded by the Drainer's mutex.
type drain struct {
	d      *Drainer
	node   string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	prev   *drain        // a forgotten drain of the same node, to outlive
	done   chan struct{} // Progress.Done
	once   sync.Once
	exited chan struct{} // closed when run has returned and no worker runs

	progress Progress // guarded by d.mu

	kickMu sync.Mutex
	kicked map[string]bool // budgets (namespace/name) that now allow a disruption
	wake   chan struct{}   // capacity 1: something changed

	// owned by run
	phase      Phase
	started    time.Time
	deadline   time.Time   // when the FailurePolicy acts (not under KeepRefusing)
	checkAgain time.Time   // when to repeat a final check that failed
	pods       cache.Store // the node's pods, kept by a watch
	targets    []*target   // the pods that must leave, sorted, Self last
	results    chan result
	inflight   int
	workers    sync.WaitGroup
	announced  map[string]bool // budgets whose refusal was logged and posted
	forced     int
	listErr    error // the last failure of the final check
	// blockedSince is when a budget began to refuse this drain; zero while none does.
	blockedSince time.Time
}

func newDrain(d *Drainer, node string, prev *drain) *drain {
	ctx, cancel := context.WithCancel(d.base)
	now := d.opts.Clock.Now()
	dr := &drain{
		d:         d,
		node:      node,
		log:       d.log.With("node", node),
		ctx:       ctx,
		cancel:    cancel,
		prev:      prev,
		done:      make(chan struct{}),
		exited:    make(chan struct{}),
		wake:      make(chan struct{}, 1),
		kicked:    map[string]bool{},
		results:   make(chan result, d.opts.Parallelism),
		announced: map[string]bool{},
		phase:     PhasePending,
		started:   now,
		deadline:  now.Add(d.opts.Timeout),
	}
	dr.progress = Progress{Node: node, Phase: PhasePending, Started: dr.started, Done: dr.done}
	return dr
}

// setPhase is the one place where the drain's phase changes. It publishes the new
// progress, and closes Done when the phase ends the drain.
func (dr *drain) setPhase(p Phase) {
	if dr.phase == p {
		return
	}
	dr.log.Debug("drain phase", "from", dr.phase, "to", p)
	dr.phase = p
	dr.publish()
	if p.ended() {
		dr.closeDone()
	}
}

func (dr *drain) closeDone() { dr.once.Do(func() { close(dr.done) }) }

// publish stores the drain's progress as its run loop knows it.
func (dr *drain) publish() { dr.d.publish(dr, dr.snapshot()) }

// poke wakes the run loop.
func (dr *drain) poke() {
	select {
	case dr.wake <- struct{}{}:
	default:
	}
}

// kick tells the drain that budget now allows a disruption.
func (dr *drain) kick(budget string) {
	dr.kickMu.Lock()
	dr.kicked[budget] = true
	dr.kickMu.Unlock()
	dr.poke()
}

// run drives the drain until its phase ends it (Drained, Failed) or its context ends
// (Forget, or Run returning).
func (dr *drain) run() {
	defer close(dr.exited)
	defer dr.workers.Wait()
	defer dr.cancel()
	if !dr.awaitTurn() {
		return
	}
	stopWatch, ok := dr.watchPods()
	if !ok {
		return
	}
	defer stopWatch()
	dr.selectTargets()
	dr.announce()
	dr.setPhase(PhaseEvicting)

	timer := dr.d.opts.Clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		dr.step()
		if dr.phase.ended() {
			return
		}
		timer.Stop()
		if at := dr.wakeAt(); !at.IsZero() {
			timer.Reset(max(at.Sub(dr.d.opts.Clock.Now()), time.Millisecond))
		}
		select {
		case <-dr.ctx.Done():
			return
		case <-dr.wake:
		case r := <-dr.results:
			dr.handle(r)
		case <-timer.C():
		}
	}
}

// awaitTurn waits until the forgotten drain of the same node has stopped and Run
// runs; false if the drain's context ended first.
func (dr *drain) awaitTurn() bool {
	if dr.prev != nil {
		select {
		case <-dr.prev.exited:
		case <-dr.ctx.Done():
			return false
		}
	}
	select {
	case <-dr.d.running:
		return true
	case <-dr.ctx.Done():
		return false
	}
}

// step takes the drain one transition further: it reads the watched pods, ends the
// drain when they are gone, applies the FailurePolicy at the deadline, and starts
// the attempts that are due.
func (dr *drain) step() {
	dr.refresh()
	dr.takeKicks()
	now := dr.d.opts.Clock.Now()
	if dr.left() == 0 && !now.Before(dr.checkAgain) {
		if dr.confirmGone() {
			dr.succeed()
			return
		}
		dr.checkAgain = now.Add(dr.d.opts.BackoffBase)
	}
	if dr.phase == PhaseEvicting && dr.d.opts.FailurePolicy != KeepRefusing && !now.Before(dr.deadline) {
		if dr.d.opts.FailurePolicy == Release {
			dr.fail()
			return
		}
		dr.startForcing()
	}
	dr.launch(now)
	dr.publish()
}

// wakeAt returns when the run loop must look again without being woken: the next
// attempt due, a final check to repeat, or the deadline; zero for none.
func (dr *drain) wakeAt() time.Time {
	at := dr.nextTry()
	if !dr.checkAgain.IsZero() && dr.left() == 0 {
		at = earliest(at, dr.checkAgain)
	}
	if dr.phase == PhaseEvicting && dr.d.opts.FailurePolicy != KeepRefusing {
		at = earliest(at, dr.deadline)
	}
	return at
}

// earliest returns the earlier of two times, a zero time meaning "none".
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// startForcing switches to deleting the pods left, Force's timeout having passed.
func (dr *drain) startForcing() {
	dr.log.Warn("drain timed out; deleting the pods left", "timeout", dr.d.opts.Timeout, "pods", dr.left())
	for _, t := range dr.targets {
		t.nextTry = time.Time{}
	}
	dr.setPhase(PhaseForcing)
}

package evict

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// drain is one node's drain: a state machine whose phase (a Phase) changes only in
// setPhase, driven by run. Its run goroutine owns every field below "owned by run";
// the progress is guarded by the Drainer's mutex.
type drain struct {
	d      *Drainer
	node   string
	uid    types.UID // the Node object drained
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	prev   *drain        // a forgotten drain of the same node, to outlive
	done   chan struct{} // Progress.Done
	once   sync.Once
	exited chan struct{} // closed when run has returned and no worker runs

	progress Progress // guarded by d.mu

	nodeGone atomic.Bool                 // the Node was deleted or replaced
	nodeSeen atomic.Pointer[corev1.Node] // the Node as last watched

	kickMu sync.Mutex
	kicked map[string]bool // budgets (namespace/name) that now allow a disruption
	wake   chan struct{}   // capacity 1: something changed

	// owned by run
	phase        Phase
	started      time.Time
	deadline     time.Time   // when the FailurePolicy acts (not under KeepRefusing)
	checkAgain   time.Time   // when to repeat a final check that failed
	emptySince   time.Time   // when the final check first found no pod that must leave
	pods         cache.Store // the node's pods, kept by a watch
	targets      []*target   // the pods that must leave, sorted, Self last
	results      chan result
	inflight     int
	workers      sync.WaitGroup
	forced       int
	listErr      error                // the last failure of the final check
	rounds       int                  // final checks that found pods arrived since
	resumed      bool                 // resumes a drained drain (Drainer.Remaining)
	attached     []string             // VolumeAttachments still attached, once pods are gone
	volumesSince time.Time            // when the wait for volumes began
	volumeBlocks []Block              // the volumes past VolumeDetachTimeout (KeepRefusing)
	blockedAt    map[string]time.Time // when each current Block began, by Block.key
	posted       map[string]time.Time // when each current Block's Event was posted, by Block.eventKey
}

func newDrain(d *Drainer, node *corev1.Node, prev *drain) *drain {
	ctx, cancel := context.WithCancel(d.base)
	now := d.opts.Clock.Now()
	dr := &drain{
		d:         d,
		node:      node.Name,
		uid:       node.UID,
		log:       d.log.With("node", node.Name),
		ctx:       ctx,
		cancel:    cancel,
		prev:      prev,
		done:      make(chan struct{}),
		exited:    make(chan struct{}),
		wake:      make(chan struct{}, 1),
		kicked:    map[string]bool{},
		results:   make(chan result, d.opts.Parallelism),
		blockedAt: map[string]time.Time{},
		posted:    map[string]time.Time{},
		phase:     PhasePending,
		started:   now,
		deadline:  d.since(node, now).Add(d.opts.Timeout),
	}
	dr.progress = Progress{Node: node.Name, NodeUID: node.UID, Phase: PhasePending, Started: dr.started, Done: dr.done}
	return dr
}

// since is when node's drain counts as begun for Timeout: Options.Since, unless it
// says nothing or a time to come.
func (d *Drainer) since(node *corev1.Node, now time.Time) time.Time {
	if d.opts.Since == nil {
		return now
	}
	if t := d.opts.Since(node); !t.IsZero() && t.Before(now) {
		return t
	}
	return now
}

// resume carries over what a drained drain of the same Node learnt, for a drain that
// goes back to evicting pods found since (Drainer.Remaining): its start, deadline
// and rounds.
func (dr *drain) resume(prev *drain) {
	dr.started, dr.deadline, dr.rounds = prev.started, prev.deadline, prev.rounds
	dr.resumed = true
	dr.progress.Started = dr.started
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
func (dr *drain) publish() Progress {
	p := dr.snapshot()
	dr.d.publish(dr, p)
	return p
}

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
	stopNodeWatch, ok := dr.watchNode()
	if !ok {
		return
	}
	defer stopNodeWatch()
	if dr.nodeGone.Load() {
		dr.loseNode()
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
		<-dr.prev.exited // stopped already: it exits soon
	}
	select {
	case <-dr.d.running:
		return true
	case <-dr.ctx.Done():
		return false
	}
}

// step takes the drain one transition further: it stops if the Node is gone, reads
// the watched pods, ends the drain when they are gone (checked by a LIST), applies
// the FailurePolicy at the deadline, starts the attempts that are due, and reports.
func (dr *drain) step() {
	if dr.nodeGone.Load() {
		dr.loseNode()
		return
	}
	dr.refresh()
	dr.takeKicks()
	now := dr.d.opts.Clock.Now()
	if dr.left() == 0 && !now.Before(dr.checkAgain) {
		switch {
		case !dr.finalCheck():
			if dr.phase == PhaseWaitingForVolumes {
				dr.volumeBlocks, dr.attached = nil, nil
				dr.setPhase(PhaseEvicting) // pods arrived
			}
		case dr.volumesDetached():
			dr.succeed()
			return
		default:
			if dr.awaitVolumes(now); dr.phase.ended() {
				return
			}
		}
		dr.checkAgain = now.Add(dr.d.opts.BackoffBase)
	}
	if dr.d.opts.FailurePolicy != KeepRefusing && !now.Before(dr.deadline) {
		switch {
		case dr.d.opts.FailurePolicy == Release, dr.returned() > 0:
			// Returning pods are not forced: deleting them would not keep them away.
			dr.fail()
			return
		case dr.phase == PhaseEvicting:
			dr.startForcing()
		}
	}
	dr.retryReturned(now)
	dr.launch(now)
	dr.postBlocks(dr.publish().Blocks)
}

// loseNode stops the drain whose Node is gone: nothing more is evicted.
func (dr *drain) loseNode() {
	dr.cancel() // requests in flight end
	dr.log.Info("drain stopped: the node is gone", "nodeUID", dr.uid, "podsLeft", dr.left())
	dr.setPhase(PhaseNodeGone)
}

// wakeAt returns when the run loop must look again without being woken: the next
// attempt due, a final check to repeat, or the deadline; zero for none.
func (dr *drain) wakeAt() time.Time {
	at := dr.nextTry()
	if !dr.checkAgain.IsZero() && dr.left() == 0 {
		at = earliest(at, dr.checkAgain)
	}
	if dr.d.opts.FailurePolicy != KeepRefusing && (dr.phase == PhaseEvicting || dr.returned() > 0) {
		at = earliest(at, dr.deadline)
	}
	for _, t := range dr.targets {
		at = earliest(at, dr.skipWaitAt(t))
		if t.phase == podReturned {
			at = earliest(at, t.nextTry)
		}
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

package evict

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// finalCheck lists the node's pods from the API server, not the watch, and reports
// whether none that must leave is there: neither a target nor a pod that arrived
// since the drain began (one that tolerates the cordon, or names the node itself).
// Newcomers become targets, to be evicted like the first ones, and the drain goes
// on; once Options.ReturningRounds checks have found newcomers, further ones are not
// evicted but block the drain (BlockedByPodsReturning): the workload would only
// churn, and the node is not rebooted while they run on it.
func (dr *drain) finalCheck() bool {
	pods, err := dr.d.listNodePods(dr.ctx, dr.node)
	if err != nil {
		if dr.ctx.Err() == nil {
			dr.listErr = err
			dr.log.Debug("cannot list the node's pods", "err", err)
		}
		return false
	}
	dr.listErr = nil
	known, skipped := map[types.UID]bool{}, map[types.UID]bool{}
	for _, t := range dr.targets {
		known[t.uid], skipped[t.uid] = true, t.skipped
	}
	var newcomers []*target
	for i := range pods {
		pod := &pods[i]
		if known[pod.UID] {
			if !finished(pod) && !skipped[pod.UID] {
				dr.revive(pod) // the watch is behind
				return false
			}
			continue
		}
		if classify(pod) == evictIt {
			newcomers = append(newcomers, dr.addTarget(pod.DeepCopy()))
		}
	}
	if len(newcomers) == 0 {
		return dr.settled()
	}
	dr.emptySince = time.Time{}
	dr.rounds++
	dr.sortTargets()
	for _, t := range newcomers {
		if dr.rounds <= dr.d.opts.ReturningRounds || t.phase == podTerminating {
			dr.log.Info("evicting a pod that arrived during the drain", "pod", t.key, "round", dr.rounds)
			continue
		}
		t.blocks = []Block{{Reason: BlockedByPodsReturning, Pod: t.key, Message: fmt.Sprintf(
			"pods that must leave keep arriving on the cordoned node (%d rounds); this one tolerates the cordon or names the node, and is evicted again only every %s: the node is not rebooted while it runs here",
			dr.rounds, dr.d.opts.ReturnRetry)}}
		dr.setPodPhase(t, podReturned)
		t.nextTry = dr.d.opts.Clock.Now().Add(dr.d.opts.ReturnRetry)
	}
	return false
}

// revive takes back a target that the watch, lagging behind the LIST, counted gone
// (it had not delivered the pod yet, or still held an older pod of the same name):
// the LIST shows the pod on the node, so it is evicted or waited for again. Without
// this, nothing would ever evict it and every final check would fail.
func (dr *drain) revive(pod *corev1.Pod) {
	for _, t := range dr.targets {
		if t.uid != pod.UID || t.phase != podGone {
			continue
		}
		t.pod = pod.DeepCopy()
		if pod.DeletionTimestamp != nil {
			dr.setPodPhase(t, podTerminating)
		} else {
			dr.setPodPhase(t, podToEvict)
		}
		dr.log.Debug("pod still on the node after the watch saw it go", "pod", t.key)
	}
}

// succeed reports the node drained.
func (dr *drain) succeed() {
	dr.listErr = nil
	dr.setPhase(PhaseDrained)
	p := dr.snapshot()
	took := dr.d.opts.Clock.Since(dr.started).Round(time.Millisecond)
	dr.log.Info("node drained", "pods", p.Pods, "forced", p.Forced, "took", took)
	dr.eventf(nil, corev1.EventTypeNormal, ReasonDrainSucceeded, actionDrain, "Node drained: %d pods gone in %s", p.Pods, took)
}

// fail gives up (FailurePolicy Release).
func (dr *drain) fail() {
	dr.setPhase(PhaseFailed)
	dr.d.recordGaveUp(dr)
	p := dr.snapshot()
	dr.log.Warn("drain failed", "err", p.Err, "blockedBy", p.BlockedBy)
	if p.PodsLeft == 0 && len(p.VolumesAttached) > 0 {
		dr.eventf(nil, corev1.EventTypeWarning, ReasonDrainFailed, actionDrain,
			"Drain gave up: volumes still attached %s after the pods left (%s); the node is not rebooted",
			dr.d.opts.VolumeDetachTimeout, listNames(p.VolumesAttached))
		return
	}
	dr.eventf(nil, corev1.EventTypeWarning, ReasonDrainFailed, actionDrain,
		"Drain gave up after %s with %d pods left (%s); the node is not rebooted", dr.d.opts.Timeout, p.PodsLeft, listNames(p.Left))
}

// retryReturned evicts again, once Options.ReturnRetry has passed, the pods that
// returned.
func (dr *drain) retryReturned(now time.Time) {
	for _, t := range dr.targets {
		if t.phase == podReturned && !now.Before(t.nextTry) {
			dr.setPodPhase(t, podToEvict)
			t.nextTry = time.Time{}
		}
	}
}

// ReturnSettle is how long a node must stay free of pods that must leave before a
// drain that evicted pods tolerating the cordon ends: their controllers' replacements
// can be scheduled back onto the cordoned node, a moment after the evicted pod is gone.
const ReturnSettle = 5 * time.Second

// settled reports whether the node, found free of pods that must leave, may count as
// drained: at once, unless the drain evicted a pod that tolerates the cordon; then
// only once it has stayed free for ReturnSettle (the final check runs again).
func (dr *drain) settled() bool {
	if !slices.ContainsFunc(dr.targets, func(t *target) bool { return toleratesCordon(t.pod) }) {
		return true
	}
	now := dr.d.opts.Clock.Now()
	if dr.emptySince.IsZero() {
		dr.emptySince = now
	}
	return now.Sub(dr.emptySince) >= ReturnSettle
}

// toleratesCordon reports whether pod tolerates the node.kubernetes.io/unschedulable
// NoSchedule taint that marks a cordoned node: the scheduler may put it there.
func toleratesCordon(pod *corev1.Pod) bool {
	if pod == nil {
		return false
	}
	for _, t := range pod.Spec.Tolerations {
		keyMatches := t.Key == "" && t.Operator == corev1.TolerationOpExists ||
			t.Key == corev1.TaintNodeUnschedulable && (t.Operator == corev1.TolerationOpExists || t.Value == "")
		if keyMatches && (t.Effect == "" || t.Effect == corev1.TaintEffectNoSchedule) {
			return true
		}
	}
	return false
}

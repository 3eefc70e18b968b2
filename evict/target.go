package evict

import (
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podPhase is where one target stands. It changes only in drain.setPodPhase.
//
//	toEvict ──attempt──▶ evicting ──accepted──▶ terminating ──gone──▶ gone
//	   ▲                    │
//	   └── nextTry ◀── refused (a budget, an error)
//
// Any phase becomes gone when the pod's UID leaves the node or the pod finishes, and
// terminating when someone else deletes it.
type podPhase int

const (
	// podToEvict: an eviction is to be sent (at nextTry, if set).
	podToEvict podPhase = iota
	// podEvicting: an eviction (or, under Force, a deletion) is in flight.
	podEvicting
	// podRefused: the last attempt was refused or failed; the next is due at nextTry.
	podRefused
	// podTerminating: the pod is being deleted (evicted by us or anyone); the drain
	// waits for it to be gone.
	podTerminating
	// podGone: deleted, replaced by a pod of another UID, or finished.
	podGone
	// podReturned: arrived after Options.ReturningRounds final checks had each
	// found newcomers; not evicted (the workload would only churn), it blocks the
	// drain (BlockedByPodsReturning) until it leaves.
	podReturned
)

func (p podPhase) String() string {
	return [...]string{"toEvict", "evicting", "refused", "terminating", "gone", "returned"}[p]
}

// target is a pod that must leave the node, identified by its UID: a pod of the same
// name with another UID (a StatefulSet's replacement) is another pod.
type target struct {
	key          string // namespace/name
	uid          types.UID
	pod          *corev1.Pod // as last seen
	self         bool
	unreplicated bool
	localStorage bool

	phase     podPhase
	skipped   bool      // terminating on a node with a silent kubelet for too long: counted gone
	termSeen  time.Time // when the drain first saw it terminating, on its own clock
	since     time.Time // when it became a target: Force deletes it Timeout after
	failures  int
	nextTry   time.Time
	blockedBy []string // budgets that refused its last eviction
	blocks    []Block  // why it cannot leave now; Since is kept by the drain
	err       error    // the last attempt's error
	errAt     time.Time
	warned    bool // its first error was logged at warning level
}

// setPodPhase is the one place where a target's phase changes. Leaving podRefused
// (or entering it afresh) forgets the refusal's budgets and error unless the new
// phase is podRefused, whose caller sets them.
func (dr *drain) setPodPhase(t *target, p podPhase) {
	if t.phase == p {
		return
	}
	if t.phase == podEvicting {
		dr.inflight--
	}
	if p == podEvicting {
		dr.inflight++
	}
	if p != podRefused && p != podEvicting && p != podReturned {
		t.blockedBy, t.err, t.blocks = nil, nil, nil
	}
	t.phase = p
	if p == podTerminating && t.termSeen.IsZero() {
		t.termSeen = dr.d.opts.Clock.Now()
	}
	if p == podGone {
		dr.log.Debug("pod gone", "pod", t.key)
	}
}

// selectTargets picks, from the node's pods as first listed, those that must leave.
// Pods bound to the node later are found by the final check (finalCheck). They count
// as targets since the drain's start, or since now for a resumed drain, whose pods
// all arrived after the drain it resumes.
func (dr *drain) selectTargets() {
	for _, obj := range dr.pods.List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok || classify(pod) != evictIt {
			continue
		}
		t := dr.addTarget(pod)
		if !dr.resumed {
			t.since = dr.started
		}
	}
	dr.sortTargets()
}

// sortTargets puts the targets in the order of their attempts: by name, Self last.
func (dr *drain) sortTargets() {
	sort.Slice(dr.targets, func(i, j int) bool {
		a, b := dr.targets[i], dr.targets[j]
		if a.self != b.self {
			return b.self
		}
		return a.key < b.key
	})
}

// addTarget makes pod a target, waiting for it if it is already terminating.
func (dr *drain) addTarget(pod *corev1.Pod) *target {
	t := &target{
		key:          pod.Namespace + "/" + pod.Name,
		uid:          pod.UID,
		pod:          pod,
		unreplicated: unreplicatedFilter(pod),
		localStorage: localStorageFilter(pod),
		since:        dr.d.opts.Clock.Now(),
	}
	t.self = t.key == dr.d.opts.Self
	if pod.DeletionTimestamp != nil {
		dr.setPodPhase(t, podTerminating)
	}
	dr.targets = append(dr.targets, t)
	return t
}

// refresh updates the targets from the watched pods.
func (dr *drain) refresh() {
	now := dr.d.opts.Clock.Now()
	for _, t := range dr.targets {
		if t.phase == podGone {
			continue
		}
		obj, exists, _ := dr.pods.GetByKey(t.key)
		pod, _ := obj.(*corev1.Pod)
		if !exists || pod == nil || pod.UID != t.uid || finished(pod) {
			dr.setPodPhase(t, podGone)
			continue
		}
		t.pod = pod
		if pod.DeletionTimestamp != nil && t.phase != podEvicting && t.phase != podTerminating {
			dr.setPodPhase(t, podTerminating)
		}
		if t.phase == podTerminating && dr.skipWait(t, now) {
			dr.skip(t)
		}
	}
}

// skipWaitAt returns when a terminating target stops being waited for: its deletion
// timestamp plus SkipWaitForDeleteTimeout, while the node's kubelet is silent (Ready
// Unknown); zero for never. It is never earlier than the pod's grace period plus
// SkipWaitForDeleteTimeout after the drain first saw the pod terminating, on this
// process's clock: the deletion timestamp comes from the API server's clock, and a
// clock of ours running ahead would otherwise skip the wait.
func (dr *drain) skipWaitAt(t *target) time.Time {
	if t.phase != podTerminating {
		return time.Time{}
	}
	at := dr.d.skipWaitAt(dr.nodeSeen.Load(), t.pod)
	if at.IsZero() || t.termSeen.IsZero() {
		return at
	}
	var grace time.Duration
	if s := t.pod.DeletionGracePeriodSeconds; s != nil && *s > 0 {
		grace = time.Duration(*s) * time.Second
	}
	if own := t.termSeen.Add(grace + dr.d.opts.SkipWaitForDeleteTimeout); own.After(at) {
		return own
	}
	return at
}

// skipWaitAt returns when pod, terminating on node, counts as gone: its deletion
// timestamp plus SkipWaitForDeleteTimeout, if node's kubelet is silent (Ready
// Unknown); zero for never.
func (d *Drainer) skipWaitAt(node *corev1.Node, pod *corev1.Pod) time.Time {
	if pod.DeletionTimestamp == nil || d.opts.SkipWaitForDeleteTimeout < 0 || !kubeletSilent(node) {
		return time.Time{}
	}
	return pod.DeletionTimestamp.Add(d.opts.SkipWaitForDeleteTimeout)
}

func (dr *drain) skipWait(t *target, now time.Time) bool {
	at := dr.skipWaitAt(t)
	return !at.IsZero() && !now.Before(at)
}

// skip counts a pod that terminates on a node whose kubelet is silent as gone (see
// Options.SkipWaitForDeleteTimeout), and says so.
func (dr *drain) skip(t *target) {
	t.skipped = true
	dr.setPodPhase(t, podGone)
	dr.log.Warn("pod counted gone: terminating on a node whose kubelet is silent, past its grace period",
		"pod", t.key, "deletionTimestamp", t.pod.DeletionTimestamp.Time, "skipWaitForDeleteTimeout", dr.d.opts.SkipWaitForDeleteTimeout)
	dr.eventf(podRef(t.key, t.uid), corev1.EventTypeWarning, ReasonDrainSkippedTerminatingPod, actionDrain,
		"Pod %s counted gone: it has been terminating since %s on this node, whose kubelet is silent (Ready Unknown), %s past its grace period; its eviction was accepted",
		t.key, t.pod.DeletionTimestamp.UTC().Format(time.RFC3339), dr.d.opts.SkipWaitForDeleteTimeout)
}

// kubeletSilent reports whether the Node's kubelet has stopped posting: its Ready
// condition is Unknown (what the node lifecycle controller writes once the kubelet's
// heartbeats stop, judged on the controller's own clock) or absent (no kubelet ever
// posted); false for no Node. Ready False does not count: a live kubelet posts it
// (runtime or network not ready, PLEG unhealthy), and it is still stopping its pods.
func kubeletSilent(n *corev1.Node) bool {
	if n == nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionUnknown
		}
	}
	return true // no Ready condition: no kubelet has ever posted
}

// takeKicks makes the pods blocked by a budget that now allows a disruption due.
func (dr *drain) takeKicks() {
	dr.kickMu.Lock()
	kicked := dr.kicked
	dr.kicked = map[string]bool{}
	dr.kickMu.Unlock()
	if len(kicked) == 0 {
		return
	}
	for _, t := range dr.targets {
		for _, b := range t.blockedBy {
			if kicked[b] {
				t.nextTry = time.Time{}
			}
		}
	}
}

// returned counts the targets that block the drain by returning.
func (dr *drain) returned() int {
	n := 0
	for _, t := range dr.targets {
		if t.phase == podReturned {
			n++
		}
	}
	return n
}

// left counts the targets not gone yet.
func (dr *drain) left() int {
	n := 0
	for _, t := range dr.targets {
		if t.phase != podGone {
			n++
		}
	}
	return n
}

// due reports whether t waits for an attempt (not necessarily now).
func (dr *drain) due(t *target) bool {
	if t.phase != podToEvict && t.phase != podRefused {
		return false
	}
	if t.self {
		// Self leaves last, once every other pod is gone.
		for _, o := range dr.targets {
			if !o.self && o.phase != podGone {
				return false
			}
		}
	}
	return true
}

// nextTry returns when the next attempt is due; zero if none is, or if no attempt may
// start before one in flight ends (its result wakes the loop).
func (dr *drain) nextTry() time.Time {
	var at time.Time
	if dr.inflight >= dr.d.opts.Parallelism {
		return at
	}
	for _, t := range dr.targets {
		if dr.due(t) {
			at = earliest(at, t.nextTry)
			if at.IsZero() {
				return time.Unix(0, 1) // due now
			}
		}
	}
	return at
}

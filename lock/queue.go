package lock

import (
	"cmp"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// DefaultWaiterTimeout is how long after its last request a waiting node still counts
// as waiting: two of Zincati's update-check periods (300 s plus up to 10 %) and a
// margin. A node whose Zincati stopped asking (update withdrawn, agent stopped) leaves
// the queue after it.
const DefaultWaiterTimeout = 12 * time.Minute

// Waiter is a node that waits for a slot, as its annotations record it
// (AnnotationWaitingSince, AnnotationLastRequest, AnnotationRequestUntil).
type Waiter struct {
	Node  string
	Group string
	// Since is when its current wait began.
	Since time.Time
	// LastRequest is when its latest pre-reboot request arrived, or ended if it has.
	LastRequest time.Time
	// RequestUntil is the deadline of its request held open now; zero if none.
	RequestUntil time.Time
	// Place is its 1-based place in its group's order (node names, alphabetical: the
	// order in which the lock grants slots).
	Place int
}

// Open reports whether the waiter has a pre-reboot request held open at now.
func (w Waiter) Open(now time.Time) bool { return now.Before(w.RequestUntil) }

// Stale reports whether the waiter stopped asking: no request open at now and none
// within timeout (0: DefaultWaiterTimeout).
func (w Waiter) Stale(now time.Time, timeout time.Duration) bool {
	if timeout <= 0 {
		timeout = DefaultWaiterTimeout
	}
	last := w.LastRequest
	if w.RequestUntil.After(last) {
		last = w.RequestUntil
	}
	return !w.Open(now) && now.Sub(last) > timeout
}

// WaiterOf reads the waiting marks on a node: ok is false when the node does not wait
// (no AnnotationWaitingSince, or it claims or holds a slot).
func WaiterOf(n *corev1.Node) (w Waiter, ok bool) {
	a := n.Annotations
	since, err := time.Parse(time.RFC3339Nano, a[AnnotationWaitingSince])
	if err != nil || lockOf(n).State != StateReady {
		return Waiter{}, false
	}
	w = Waiter{Node: n.Name, Group: a[AnnotationGroup], Since: since}
	w.LastRequest, _ = time.Parse(time.RFC3339Nano, a[AnnotationLastRequest])
	w.RequestUntil, _ = time.Parse(time.RFC3339Nano, a[AnnotationRequestUntil])
	return w, true
}

// Queue returns the waiters among nodes that are not stale at now (timeout as in
// Waiter.Stale), by group, each group's in the order the lock grants slots, with
// Place set.
func Queue(nodes []*corev1.Node, now time.Time, timeout time.Duration) map[string][]Waiter {
	q := map[string][]Waiter{}
	for _, n := range nodes {
		if w, ok := WaiterOf(n); ok && !w.Stale(now, timeout) {
			q[w.Group] = append(q[w.Group], w)
		}
	}
	for _, ws := range q {
		slices.SortFunc(ws, func(a, b Waiter) int { return cmp.Compare(a.Node, b.Node) })
		for i := range ws {
			ws[i].Place = i + 1
		}
	}
	return q
}

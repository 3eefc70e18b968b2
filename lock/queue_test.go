package lock

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func waitingNode(name, group string, since, last, until time.Time) *corev1.Node {
	a := map[string]string{AnnotationGroup: group, AnnotationWaitingSince: since.Format(time.RFC3339Nano)}
	if !last.IsZero() {
		a[AnnotationLastRequest] = last.Format(time.RFC3339Nano)
	}
	if !until.IsZero() {
		a[AnnotationRequestUntil] = until.Format(time.RFC3339Nano)
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: a}}
}

func TestQueueOrdersFreshWaitersByName(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	holder := waitingNode("a-holder", "workers", now.Add(-time.Hour), now, time.Time{})
	holder.Annotations[AnnotationStatus] = string(StateRebooting)
	nodes := []*corev1.Node{
		waitingNode("w3", "workers", now.Add(-3*time.Minute), now.Add(-time.Minute), now.Add(20*time.Minute)),
		waitingNode("w1", "workers", now.Add(-time.Minute), now.Add(-5*time.Minute), time.Time{}),
		waitingNode("w2-gone", "workers", now.Add(-time.Hour), now.Add(-13*time.Minute), time.Time{}),
		waitingNode("c1", "control-plane", now.Add(-time.Minute), now, now.Add(time.Minute)),
		holder,
		{ObjectMeta: metav1.ObjectMeta{Name: "idle"}},
	}
	q := Queue(nodes, now, 0)
	if len(q) != 2 || len(q["workers"]) != 2 || len(q["control-plane"]) != 1 {
		t.Fatalf("queue %+v: want workers w1, w3 and control-plane c1", q)
	}
	w1, w3 := q["workers"][0], q["workers"][1]
	if w1.Node != "w1" || w1.Place != 1 || w3.Node != "w3" || w3.Place != 2 {
		t.Errorf("workers order %+v, want w1 (1), w3 (2)", q["workers"])
	}
	if w1.Open(now) || !w3.Open(now) {
		t.Errorf("open: w1 %v, w3 %v; want false, true", w1.Open(now), w3.Open(now))
	}
}

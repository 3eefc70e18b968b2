package lock

import (
	"context"
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The waiting marks (AnnotationWaitingSince, AnnotationLastRequest,
// AnnotationRequestUntil, LabelWaiting) make the queue visible on the Nodes, to every
// replica: Queue reads them. A pre-reboot request of a node that does not hold writes
// them once at its start and once at its end, if it ends without a 2xx; the promotion
// removes them in its own write; the stale loop removes those of waiters that stopped
// asking. Every one of these writes is a merge patch on the marks alone, conditioned
// on the resourceVersion read (re-read after a 409 Conflict), and leaves the lock's
// own keys alone: a claim it races with fails its promotion with a 409 and claims
// again, as after any other change of the node.

// markWaiting writes the waiting marks of a request that begins for node n (as the
// cache shows it) and may wait until the deadline until (this replica's clock): the group it
// waits in, the wait's start (kept if the node already waits in that group and is not
// stale), the request's arrival and its deadline. A node that claims or holds gets no marks. It returns the node as last
// seen (written or read), and whether the marks were written; a failure is logged and
// the request goes on without them.
func (a *acquisition) markWaiting(ctx context.Context, n *corev1.Node, until time.Time) (*corev1.Node, bool) {
	l := a.lock
	uid := n.UID
	for conflicts := 0; ; conflicts++ {
		if lockOf(n).State != StateReady || n.UID != uid { // n.UID: replaced (run says so)
			return n, false
		}
		now := l.opts.Clock.Now()
		since := now
		if w, ok := WaiterOf(n); ok && w.Group == a.group && !w.Stale(now, l.opts.WaiterTimeout) {
			since = w.Since
		}
		written, err := l.patchMarks(ctx, n, "true", map[string]any{
			AnnotationGroup:        a.group, // the group it waits in; its claim writes it too
			AnnotationWaitingSince: stamp(since),
			AnnotationLastRequest:  stamp(now),
			AnnotationRequestUntil: stamp(until),
		})
		if err == nil {
			return written, true
		}
		if !apierrors.IsConflict(err) || conflicts >= maxConflicts {
			a.log.Debug("waiting marks not written", "err", err)
			return n, false
		}
		if n, err = l.get(ctx, a.name); err != nil {
			a.log.Debug("waiting marks not written", "err", err)
			return n, false
		}
	}
}

// endRequest records, best effort, that the request which wrote the deadline until
// ended without a 2xx: it removes AnnotationRequestUntil and stamps
// AnnotationLastRequest. A node that holds now (promoted meanwhile), or whose
// deadline is another request's (a later request of the same node), is left alone.
func (a *acquisition) endRequest(ctx context.Context, until time.Time) {
	l := a.lock
	n, ok := l.cachedNode(a.name)
	fresh := false
	var err error
	for conflicts := 0; ; conflicts++ {
		if !ok || lockOf(n).State != StateReady || n.Annotations[AnnotationRequestUntil] != stamp(until) {
			if fresh { // the cache may not show our own marks yet: read the node once
				return
			}
			if n, err = l.get(ctx, a.name); err != nil {
				break
			}
			ok, fresh = true, true
			continue
		}
		_, err = l.patchMarks(ctx, n, "", map[string]any{
			AnnotationRequestUntil: nil,
			AnnotationLastRequest:  stamp(l.opts.Clock.Now()),
		})
		if err == nil || !apierrors.IsConflict(err) || conflicts >= maxConflicts {
			break
		}
		if n, err = l.get(ctx, a.name); err != nil {
			break
		}
		fresh = true
	}
	if err != nil {
		a.log.Debug("end of request not recorded on the node", "err", err)
	}
}

// removeStaleWaiters removes the waiting marks of every node that stopped asking
// (Waiter.Stale with Options.WaiterTimeout), and any left on a node that does not
// wait (a mark without a readable AnnotationWaitingSince), each conditioned on the
// node as the cache shows it: a request that arrived meanwhile keeps its marks.
func (l *Lock) removeStaleWaiters(ctx context.Context) {
	now := l.opts.Clock.Now()
	for _, obj := range l.nodes.GetIndexer().List() {
		n := obj.(*corev1.Node)
		if lockOf(n).State != StateReady || !hasWaitingMarks(n) {
			continue
		}
		w, ok := WaiterOf(n)
		if ok && !w.Stale(now, l.opts.WaiterTimeout) {
			continue
		}
		_, err := l.patchMarks(ctx, n, nil, map[string]any{
			AnnotationWaitingSince: nil,
			AnnotationLastRequest:  nil,
			AnnotationRequestUntil: nil,
		})
		if err != nil {
			l.log.Debug("stale waiting marks not removed", "node", n.Name, "err", err)
			continue
		}
		l.log.Info("stale waiter left the queue", "node", n.Name, "group", w.Group,
			"waitingSince", w.Since, "lastRequest", w.LastRequest)
	}
}

// hasWaitingMarks reports whether n carries any waiting mark.
func hasWaitingMarks(n *corev1.Node) bool {
	if _, ok := n.Labels[LabelWaiting]; ok {
		return true
	}
	for _, k := range []string{AnnotationWaitingSince, AnnotationLastRequest, AnnotationRequestUntil} {
		if _, ok := n.Annotations[k]; ok {
			return true
		}
	}
	return false
}

// patchMarks writes annotations (nil values remove keys) and LabelWaiting (label:
// "true" sets it, nil removes it, "" leaves it) on n, conditioned on n's
// resourceVersion.
func (l *Lock) patchMarks(ctx context.Context, n *corev1.Node, label any, annotations map[string]any) (*corev1.Node, error) {
	meta := map[string]any{"resourceVersion": n.ResourceVersion, "annotations": annotations}
	if label != "" {
		meta["labels"] = map[string]any{LabelWaiting: label}
	}
	b, _ := json.Marshal(map[string]any{"metadata": meta}) // strings and nils always marshal
	return l.client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: FieldManager})
}

// stamp formats a time as the lock's annotations record it.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

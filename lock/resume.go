package lock

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Drains survive their replica: a holder's grant is on its Node, so every replica
// resumes, once its cache has synced and then every ResumeInterval, the drain of every
// holder that has not rebooted yet (its boot ID is the one recorded at the grant). A
// rolling update of the replicas, or a replica killed mid-drain, costs no more than
// the restart: the drain goes on without waiting for the node's next Zincati poll,
// minutes later. Starting the drain of a node whose drain is under way or done here
// costs nothing (Drainer.Start returns its progress); a drain of a holder that was
// already told to reboot finds nothing to evict.

// ResumeInterval is how often a replica looks for holders whose drain it should run.
const ResumeInterval = 10 * time.Second

// resumeDrains starts or resumes the drain of every holder that has not rebooted. The
// cache only proposes candidates: a cache that lags may still show a node holding that
// was released (and uncordoned) meanwhile, so each is read from the API server first,
// and its drain started only if it still holds the same grant and has not rebooted. A
// release that lands between that read and the start is caught by the cache check
// after it (or by the release's own Forget, which comes after the cache shows it). A
// holder someone else uncordoned is not drained (its request refuses it): a drain of it
// under way here stops.
func (l *Lock) resumeDrains(ctx context.Context) {
	for _, obj := range l.nodes.GetIndexer().List() {
		if n := obj.(*corev1.Node); heldNotRebooted(n) {
			l.resumeDrain(ctx, grantOf(n))
		}
	}
}

// heldNotRebooted reports whether n holds a slot and has not rebooted since its grant.
func heldNotRebooted(n *corev1.Node) bool {
	st := lockOf(n)
	rebooted := st.BootID != "" && n.Status.NodeInfo.BootID != st.BootID
	return st.State == StateRebooting && !rebooted
}

// resumeDrain starts the drain of grant g's node if a fresh read confirms it.
func (l *Lock) resumeDrain(ctx context.Context, g Grant) {
	n, err := l.get(ctx, g.Node)
	if err != nil || !heldNotRebooted(n) || !sameGrant(grantOf(n), g) {
		return
	}
	if !n.Spec.Unschedulable {
		l.drainer.Forget(g.Node)
		return
	}
	l.drainer.Start(n)
	if c, ok := l.cachedNode(g.Node); !ok || !heldNotRebooted(c) || !sameGrant(grantOf(c), g) {
		l.drainer.Forget(g.Node) // released (or replaced) since the read
	}
}

// resumeLoop runs resumeDrains at once and every ResumeInterval until ctx ends, while
// the API server answers.
func (l *Lock) resumeLoop(ctx context.Context) {
	t := time.NewTicker(ResumeInterval)
	defer t.Stop()
	for {
		if l.apiDown() == nil {
			l.resumeDrains(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// GrantedAt is when node took the slot it holds (its promotion, on the promoting
// replica's clock), or the zero time if it holds none. evict.Options.Since takes it,
// so that a drain's Timeout counts from the grant, on whichever replica drains.
func GrantedAt(node *corev1.Node) time.Time {
	if st := lockOf(node); st.State == StateRebooting {
		return st.Since
	}
	return time.Time{}
}

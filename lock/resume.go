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

// resumeDrains starts or resumes the drain of every holder that has not rebooted.
func (l *Lock) resumeDrains() {
	for _, obj := range l.nodes.GetIndexer().List() {
		n := obj.(*corev1.Node)
		st := lockOf(n)
		rebooted := st.BootID != "" && n.Status.NodeInfo.BootID != st.BootID
		if st.State != StateRebooting || rebooted {
			continue
		}
		l.drainer.Start(n)
	}
}

// resumeLoop runs resumeDrains at once and every ResumeInterval until ctx ends, while
// the API server answers.
func (l *Lock) resumeLoop(ctx context.Context) {
	t := time.NewTicker(ResumeInterval)
	defer t.Stop()
	for {
		if l.apiDown() == nil {
			l.resumeDrains()
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

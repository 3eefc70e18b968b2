package evict

import (
	"context"
	"slices"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/types"
)

// A drain that gave up (FailurePolicy Release) is remembered, past Forget, so that
// the node is not drained again while nothing has changed: each retry of its
// Zincati would otherwise cordon it again and evict every pod that can go while the
// same pod stays blocked.

// recordGaveUp remembers dr, which has just failed.
func (d *Drainer) recordGaveUp(dr *drain) {
	d.mu.Lock()
	d.gaveUp[dr.node] = dr
	d.mu.Unlock()
}

// GaveUp reports whether the last drain of this Node object gave up (FailurePolicy
// Release) and what made it give up still holds, so that draining the node again
// now would only churn. It returns that drain's final Progress: Failed, GaveUpBefore
// set, and Blocks, BlockedBy, Left and Err saying why. Something has changed, and
// GaveUp returns false (and forgets the drain), once the pods left at its end are
// gone from the node (a fresh LIST), a budget that blocked it allows a disruption or
// is deleted, or the volumes it waited for are detached. Other changes (an
// operator's release, a new window) are the caller's to see: it calls Retry. An
// error (the LIST failed) comes with true: fail closed.
func (d *Drainer) GaveUp(ctx context.Context, node *corev1.Node) (Progress, bool, error) {
	d.mu.Lock()
	dr := d.gaveUp[node.Name]
	if dr != nil && dr.uid != node.UID {
		delete(d.gaveUp, node.Name)
		dr = nil
	}
	d.mu.Unlock()
	if dr == nil {
		return Progress{}, false, nil
	}
	p := dr.finalProgress()
	changed, err := d.changedSince(ctx, node.Name, p)
	if err != nil {
		return p, true, err
	}
	if changed {
		dr.log.Info("what made an earlier drain give up has changed; the node may be drained again")
		d.Retry(node.Name)
		return Progress{}, false, nil
	}
	return p, true, nil
}

// Retry forgets that a drain of node gave up: the next Start drains it again. For an
// operator's release, or a reboot window that opened anew.
func (d *Drainer) Retry(node string) {
	d.mu.Lock()
	delete(d.gaveUp, node)
	d.mu.Unlock()
}

// finalProgress is the progress of a drain that gave up, as Start and GaveUp return
// it afterwards.
func (dr *drain) finalProgress() Progress {
	dr.d.mu.Lock()
	p := dr.progress
	dr.d.mu.Unlock()
	p.GaveUpBefore = true
	return p
}

// changedSince reports whether what made a drain give up has changed: see GaveUp.
func (d *Drainer) changedSince(ctx context.Context, node string, p Progress) (bool, error) {
	for _, key := range p.BlockedBy {
		if d.pdbAllows(key) {
			return true, nil
		}
	}
	if p.PodsLeft == 0 {
		return len(d.attachedVolumes(node)) == 0, nil
	}
	pods, err := d.listNodePods(ctx, node)
	if err != nil {
		return false, err
	}
	for i := range pods {
		pod := &pods[i]
		if slices.Contains(p.leftUIDs, pod.UID) && !finished(pod) {
			return false, nil // one of them is still there
		}
	}
	return true, nil
}

// pdbAllows reports whether the budget (namespace/name), as watched, is gone or
// allows a disruption.
func (d *Drainer) pdbAllows(key string) bool {
	if !d.isRunning() {
		return false
	}
	obj, exists, err := d.pdbs.GetByKey(key)
	if err != nil {
		return false
	}
	if !exists {
		return true
	}
	pdb, ok := obj.(*policyv1.PodDisruptionBudget)
	return ok && pdb.Status.ObservedGeneration >= pdb.Generation && pdb.Status.DisruptionsAllowed > 0
}

// leftUIDsOf lists the UIDs of the targets not gone.
func (dr *drain) leftUIDsOf() []types.UID {
	var uids []types.UID
	for _, t := range dr.targets {
		if t.phase != podGone {
			uids = append(uids, t.uid)
		}
	}
	return uids
}

package evict

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// confirmGone lists the node's pods from the API server, not the watch, and reports
// whether every target is gone.
func (dr *drain) confirmGone() bool {
	list, err := dr.d.client.CoreV1().Pods(metav1.NamespaceAll).List(dr.ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", dr.node).String(),
	})
	if err != nil {
		if dr.ctx.Err() == nil {
			dr.listErr = fmt.Errorf("list the node's pods: %w", err)
			dr.log.Debug("cannot list the node's pods", "err", err)
		}
		return false
	}
	dr.listErr = nil
	uids := map[types.UID]bool{}
	for i := range list.Items {
		if !finished(&list.Items[i]) {
			uids[list.Items[i].UID] = true
		}
	}
	for _, t := range dr.targets {
		if uids[t.uid] {
			return false
		}
	}
	return true
}

// succeed reports the node drained.
func (dr *drain) succeed() {
	dr.listErr = nil
	dr.setPhase(PhaseDrained)
	p := dr.snapshot()
	took := dr.d.opts.Clock.Since(dr.started).Round(time.Millisecond)
	dr.log.Info("node drained", "pods", p.Pods, "forced", p.Forced, "took", took)
	dr.event(nil, corev1.EventTypeNormal, ReasonDrainSucceeded, actionDrain, "Node drained: %d pods gone in %s", p.Pods, took)
}

// fail gives up (FailurePolicy Release).
func (dr *drain) fail() {
	dr.setPhase(PhaseFailed)
	p := dr.snapshot()
	dr.log.Warn("drain failed", "err", p.Err, "blockedBy", p.BlockedBy)
	dr.event(nil, corev1.EventTypeWarning, ReasonDrainFailed, actionDrain,
		"Drain gave up after %s with %d pods left (%s); the node is not rebooted", dr.d.opts.Timeout, p.PodsLeft, listNames(p.Left))
}

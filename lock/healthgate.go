package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// The health gate: with Policy.ReleaseWhenReady, steady-state releases a holder only
// once its Node is Ready again.

// awaitReady waits, from the cache, until the node is Ready, for at most Wait.
func (l *Lock) awaitReady(ctx context.Context, name string) error {
	deadline := time.Now().Add(l.opts.Wait)
	for {
		wake := l.changed.wait()
		obj, ok, _ := l.nodes.GetIndexer().GetByKey(name)
		if !ok {
			return ErrNotHolder // deleted, and its lock with it
		}
		if NodeReady(obj.(*corev1.Node)) {
			return nil
		}
		// Ready changes wake us; the timer is a fallback.
		err := l.sleep(ctx, 5*time.Second, deadline, wake, nil)
		if errors.Is(err, errExpired) {
			return fmt.Errorf("node %s is not Ready after its reboot; the slot stays held until it is: %w", name, fleetlock.ErrNodeNotReady)
		}
		if err != nil {
			return err
		}
	}
}

// ReadyCondition returns the node's Ready condition; ok is false if it has none.
func ReadyCondition(n *corev1.Node) (c corev1.NodeCondition, ok bool) {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c, true
		}
	}
	return c, false
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	c, _ := ReadyCondition(n)
	return c.Status == corev1.ConditionTrue
}

// readySince returns since when the node has been Ready; zero if it is not.
func readySince(n *corev1.Node) time.Time {
	if c, _ := ReadyCondition(n); c.Status == corev1.ConditionTrue {
		return c.LastTransitionTime.Time
	}
	return time.Time{}
}

package lock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// awaitDrain starts or resumes the drain of the holder n and waits for it to finish,
// then earns the 2xx (allow). Everything belongs to n's grant: the Node object (its
// UID) and the promotion; if that Node goes, the wait ends with fleetlock.ErrNodeGone.
func (a *acquisition) awaitDrain(ctx context.Context, n *corev1.Node) error {
	l, g := a.lock, grantOf(n)
	if grantBeforeDrain {
		l.drainer.Start(n)
		return nil
	}
	var left []types.NamespacedName // must-leave pods the last check before a 2xx found
	for {
		wake := l.nodeChanged.wait(a.name) // before the cache is read, so that no change is missed
		c, ok := a.cached()
		if !ok || c.UID != g.UID {
			if err := a.stillThisNode(ctx, g); err != nil {
				return err
			}
		} else {
			n = c
		}
		if !n.Spec.Unschedulable {
			// Uncordoned by someone else (or the cache lags our cordon): a drain
			// would evict the pods the scheduler now places on the node.
			fresh, err := a.stillHolding(ctx, g)
			if err != nil {
				return err
			}
			if !fresh.Spec.Unschedulable {
				l.drainer.Forget(a.name)
				return a.uncordoned(fresh, g)
			}
			n = fresh
		}
		p := l.drainer.Start(n)
		switch {
		case p.Drained:
			var err error
			if left, err = a.allow(ctx, g); err != nil || len(left) == 0 {
				return err
			}
			// Pods arrived since the drain began: Remaining restarted it for them.
			a.log.Info("pods bound to the drained node: draining again", "pods", len(left))
			if err := l.sleep(ctx, time.Second, a.expires, nil, wake); err != nil {
				return orDrain(err, stillToLeave(p, left))
			}
			continue
		case p.Failed:
			return a.drainFailed(ctx, p)
		case p.Phase == evict.PhaseNodeGone:
			// The drain saw its Node object go; confirm from the API server.
			if err := a.stillThisNode(ctx, g); err != nil {
				return err
			}
			l.drainer.Forget(a.name) // it is still there: drain it afresh
			continue
		}
		// The drain's end and any lock change wake us; the timer is a fallback.
		if err := l.sleep(ctx, 5*time.Second, a.expires, p.Done, wake); err != nil {
			return orDrain(err, p)
		}
		if c, ok := a.cached(); ok && c.UID == g.UID && lockOf(c).State != StateRebooting {
			// Released while draining (an operator?): confirm, then stop.
			if _, err := a.stillHolding(ctx, g); err != nil {
				return err
			}
		}
	}
}

// drainFailed gives the slot back after the drain gave up under the "release" failure
// policy, undoing our cordon, so that the node serves again and the group moves on.
func (a *acquisition) drainFailed(ctx context.Context, p evict.Progress) error {
	n, err := a.lock.get(ctx, a.name)
	if err == nil {
		err = a.lock.release(ctx, n, a.log, releaseDrainFailed)
	}
	if err != nil && !errors.Is(err, ErrNotHolder) {
		return err
	}
	return &DrainError{Progress: p}
}

// stillThisNode reads the node from the API server and returns an error matching
// fleetlock.ErrNodeGone if the Node object of the grant is gone (deleted, or replaced
// by a new one of the same name); it stops the drain then.
func (a *acquisition) stillThisNode(ctx context.Context, g Grant) error {
	n, err := a.lock.get(ctx, a.name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case n.UID == g.UID:
		return nil
	}
	a.lock.drainer.Forget(a.name)
	a.log.Info("node deleted while it held a slot: its request ends", "uid", g.UID)
	return fmt.Errorf("node %s (uid %s) was deleted while it waited for its drain: %w", a.name, g.UID, fleetlock.ErrNodeGone)
}

// cached returns the node as the cache shows it.
func (a *acquisition) cached() (*corev1.Node, bool) { return a.lock.cachedNode(a.name) }

// stillHolding reads the node from the API server and returns it if it still holds
// grant g: an error matching fleetlock.ErrNodeGone if its Node object is gone, one
// matching fleetlock.ErrLockHeld if the grant ended (an operator released it).
func (a *acquisition) stillHolding(ctx context.Context, g Grant) (*corev1.Node, error) {
	n, err := a.lock.get(ctx, a.name)
	if apierrors.IsNotFound(err) || err == nil && n.UID != g.UID {
		return nil, a.stillThisNode(ctx, g)
	}
	if err != nil {
		return nil, err
	}
	if st := lockOf(n); st.State != StateRebooting || !st.Since.Equal(g.Promoted) {
		a.lock.drainer.Forget(a.name)
		return nil, fmt.Errorf("node %s: reboot lock released while it drained: %w", a.name, fleetlock.ErrLockHeld)
	}
	return n, nil
}

// allow earns the 2xx, from a fresh read just before it: the node still holds grant g
// (same Node object, same promotion), is still cordoned (if someone else uncordoned it,
// it is refused, and not cordoned again over their decision), and no pod that must
// leave is bound to it (a fresh LIST; if there are any, they are returned and their
// drain restarted). A node that rebooted since its grant gets the boot ID of now
// recorded (a conditioned write), so that "back" means back from the reboot of this
// 2xx. Then the ToldToReboot hook runs. With the API server unreachable, nothing is
// allowed.
func (a *acquisition) allow(ctx context.Context, g Grant) ([]types.NamespacedName, error) {
	for conflicts := 0; ; conflicts++ {
		left, err := a.allowOnce(ctx, g)
		if !apierrors.IsConflict(err) {
			return left, err
		}
		if conflicts >= maxConflicts {
			return nil, apiError("record the boot ID before the reboot", err)
		}
	}
}

// allowOnce is one attempt of allow: a 409 Conflict of its boot ID write means the
// node changed since it was read, and it must be checked again.
func (a *acquisition) allowOnce(ctx context.Context, g Grant) ([]types.NamespacedName, error) {
	n, err := a.stillHolding(ctx, g)
	if err != nil {
		return nil, err
	}
	if !n.Spec.Unschedulable {
		return nil, a.uncordoned(n, g)
	}
	left, err := a.lock.drainer.Remaining(ctx, n)
	if err != nil {
		return nil, apiError("list the node's pods", err)
	}
	if len(left) > 0 {
		return left, nil
	}
	if boot := n.Status.NodeInfo.BootID; boot != "" && boot != g.BootID {
		// It rebooted since its grant (a crash mid-drain): "back" is a boot ID other
		// than this one, the boot ID at the 2xx, so record it first, conditioned on
		// the node as just checked (a 409 makes the request check again).
		if n, err = a.lock.patch(ctx, n.Name, write{resourceVersion: n.ResourceVersion, state: StateRebooting,
			group: g.Group, since: g.Promoted, bootID: boot}); err != nil {
			if apierrors.IsConflict(err) {
				return nil, err
			}
			return nil, apiError("record the boot ID before the reboot", err)
		}
		a.log.Info("node rebooted since its grant: boot ID recorded anew", "bootID", boot, "grantBootID", g.BootID)
		g.BootID = boot
	}
	if err := a.lock.opts.Hooks.ToldToReboot(ctx, n, g, a.lock.opts.Clock.Now()); err != nil {
		return nil, apiError("before reboot", err)
	}
	a.log.Info("reboot allowed: node drained")
	return nil, nil
}

// uncordoned is the refusal of holder n, which someone else uncordoned: it is neither
// drained nor told to reboot, and not cordoned again over their decision.
func (a *acquisition) uncordoned(n *corev1.Node, g Grant) error {
	by := uncordonedBy(n, g)
	a.log.Warn("holder uncordoned by someone else: not drained, not told to reboot", "by", by)
	return &Refusal{Reason: ReasonNodeUncordoned, Err: fleetlock.ErrNodeUncordoned, Warning: true,
		Msg: fmt.Sprintf("node %s holds a reboot slot but was uncordoned by %s: not rebooting it; cordon it again to go on, or release it (reboot-manager release %s)", n.Name, by, n.Name)}
}

// uncordonedBy names, from the Node's managed fields, who changed its spec since the
// grant, other than reboot-manager: the managers of spec.unschedulable first, else of
// any spec field written since; "someone else" if they do not say (an uncordon removes
// the field, and with it every trace of who removed it).
func uncordonedBy(n *corev1.Node, g Grant) string {
	var owners, recent []string
	for _, m := range n.ManagedFields {
		if m.Manager == FieldManager || m.FieldsV1 == nil {
			continue
		}
		fields := m.FieldsV1.GetRawString()
		switch {
		case strings.Contains(fields, `"f:unschedulable"`):
			owners = append(owners, m.Manager)
		case strings.Contains(fields, `"f:spec"`) && m.Time != nil && !m.Time.Time.Before(g.Promoted.Truncate(time.Second)):
			recent = append(recent, m.Manager)
		}
	}
	switch {
	case len(owners) > 0:
		return "field manager " + strings.Join(owners, ", ")
	case len(recent) > 0:
		return "field manager " + strings.Join(recent, ", ")
	}
	return "someone else (the Node's managed fields do not say who)"
}

// stillToLeave is p with the pods a fresh LIST found still to leave.
func stillToLeave(p evict.Progress, left []types.NamespacedName) evict.Progress {
	p.Drained = false
	p.PodsLeft = len(left)
	p.Left = nil
	for _, pod := range left {
		p.Left = append(p.Left, pod.String())
	}
	return p
}

// orDrain turns an expired wait for the drain into the *DrainError that says where it
// stands.
func orDrain(err error, p evict.Progress) error {
	if errors.Is(err, errExpired) {
		return &DrainError{Progress: p}
	}
	return err
}

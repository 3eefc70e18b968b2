package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// The health gate: steady-state releases a holder only on evidence of this reboot.
//
// "Back" is the Node Ready with a boot ID other than the one recorded at the grant.
// Zincati sends steady-state as soon as it starts, which may be before the kubelet has
// posted anything, and a reboot without graceful node shutdown is never marked
// NotReady: the Node may still show the Ready and the boot ID of before. So the
// request is held (up to Options.Wait, then node_not_ready) until the node is back.
// Only a kubelet seen alive after steady-state arrived — its Lease in kube-node-lease
// renewed twice since, a whole renewal period, which leaves it time to post its status
// — that still reports the boot ID of the grant shows that the machine did not reboot:
// the slot is released then (refusing would deadlock Zincati, which looks for updates
// only after a 2xx), with the RebootNotObserved Event. Nothing here compares clocks:
// a renewal is a change of the Lease, whatever time it carries.

// leaseNamespace is where kubelets renew their node Leases.
const leaseNamespace = "kube-node-lease"

// aliveRenewals is how many Lease renewals after steady-state arrived show the kubelet
// alive.
const aliveRenewals = 2

// backPoll is how often a held steady-state reads the node's Lease.
const backPoll = time.Second

// awaitBack waits until the holder cached is back or its kubelet shows that it did not
// reboot, and returns the Node as just read from the API server, for a release
// conditioned on it. It returns ErrNotHolder if the grant ended meanwhile (the Node
// deleted or released), and an error matching fleetlock.ErrNodeNotReady after Wait.
//
// The grant it waits on (the boot ID at the 2xx) is read anew with each look at the
// node, never kept from cached: the 2xx may have recorded a new boot ID that cached,
// and a lagging cache, do not show yet.
func (l *Lock) awaitBack(ctx context.Context, cached *corev1.Node) (*corev1.Node, error) {
	first := grantOf(cached)
	renewals := leaseWatch{name: first.Node}
	deadline := time.Now().Add(l.opts.Wait)
	for {
		wake := l.nodeChanged.wait(first.Node)
		c, ok := l.cachedNode(first.Node)
		if !ok || !samePromotion(c, first) {
			return nil, ErrNotHolder // deleted or released, and its slot with it
		}
		isBack := back(c, grantOf(c))
		if !isBack {
			renewals.observe(ctx, l)
		}
		if isBack || renewals.seen >= aliveRenewals {
			n, err := l.get(ctx, first.Node)
			switch {
			case apierrors.IsNotFound(err):
				return nil, ErrNotHolder
			case err != nil:
				return nil, err
			case !samePromotion(n, first):
				return nil, ErrNotHolder
			}
			g := grantOf(n)
			if back(n, g) || renewals.seen >= aliveRenewals && NodeReady(n) && n.Status.NodeInfo.BootID == g.BootID {
				return n, nil
			}
		}
		err := l.poll(ctx, backPoll, deadline, wake, nil)
		if errors.Is(err, errExpired) {
			return nil, fmt.Errorf("node %s is not back from its reboot (Ready with a new boot ID); the slot stays held until it is: %w",
				first.Node, fleetlock.ErrNodeNotReady)
		}
		if err != nil {
			return nil, err
		}
	}
}

// samePromotion reports whether n holds a slot by the promotion of g: the same Node
// object and the same promotion, whatever boot ID was recorded since.
func samePromotion(n *corev1.Node, g Grant) bool {
	return n.UID == g.UID && lockOf(n).holding() && lockOf(n).Since.Equal(g.Promoted)
}

// back reports whether n shows this reboot over: Ready, with a boot ID other than
// the grant's (any, if none was recorded).
func back(n *corev1.Node, g Grant) bool {
	return NodeReady(n) && (g.BootID == "" || n.Status.NodeInfo.BootID != g.BootID)
}

// leaseWatch counts the renewals of a node's Lease since it was first observed.
type leaseWatch struct {
	name     string
	observed bool
	version  string // the Lease's resourceVersion when last read; "" if there was none
	seen     int    // renewals since the first observation
}

// observe reads the Lease from the API server and counts a renewal if it changed
// since the last read. A Lease that cannot be read shows nothing: without it, only a
// new boot ID releases (fail closed); a refusal (RBAC) is logged once.
func (w *leaseWatch) observe(ctx context.Context, l *Lock) {
	lease, err := l.client.CoordinationV1().Leases(leaseNamespace).Get(ctx, w.name, metav1.GetOptions{})
	version := ""
	switch {
	case apierrors.IsNotFound(err):
	case apierrors.IsForbidden(err):
		if l.leasesForbidden.CompareAndSwap(false, true) {
			l.log.Warn("cannot read node Leases: a holder that did not reboot is never released by steady-state (grant get on leases in kube-node-lease)", "err", err)
		}
		return
	case err != nil:
		l.log.Debug("cannot read node lease", "node", w.name, "err", err)
		return
	default:
		version = lease.ResourceVersion
	}
	if w.observed && version != "" && version != w.version {
		w.seen++
	}
	w.observed, w.version = true, version
}

// cachedNode returns the node named name as the cache shows it.
func (l *Lock) cachedNode(name string) (*corev1.Node, bool) {
	obj, ok, err := l.nodes.GetIndexer().GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	return obj.(*corev1.Node), true
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

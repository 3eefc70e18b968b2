package lock

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
)

// ErrNotHolder is returned by Release for a node that holds no lock.
var ErrNotHolder = errors.New("node holds no reboot lock")

// releaseCause says who released a slot.
type releaseCause string

const (
	releaseSteadyState  releaseCause = "steady-state"
	releaseManual       releaseCause = "operator"
	releaseStale        releaseCause = "stale-holder"
	releaseDrainFailed  releaseCause = "drain-failure-policy"
	releaseReRegistered releaseCause = "re-registered"
)

// conflictBackoff paces the re-reads after a 409 Conflict: maxConflicts tries, a few
// milliseconds apart.
var conflictBackoff = wait.Backoff{Steps: maxConflicts, Duration: 5 * time.Millisecond, Factor: 1.2, Jitter: 0.5}

// ReleaseNode releases the slot node holds, in one write conditioned on what it read
// (re-read after a 409 Conflict), which also uncordons the node if reboot-manager
// cordoned it and no operator holds it (AnnotationHold). It returns the Node as the release left it and the grant it ended, or
// ErrNotHolder if the node holds no slot, or an *APIError. It is the `release`
// command's; a running Lock's own releases (Lock.Release) also stop the drain, count
// and post Events.
func ReleaseNode(ctx context.Context, client kubernetes.Interface, node string, clk clock.PassiveClock) (*corev1.Node, Grant, error) {
	n, err := getNode(ctx, client, node)
	if err != nil {
		return nil, Grant{}, err
	}
	return clearHold(ctx, client, n, clk, false, false, nil)
}

// clearHold clears n's lock, re-reading after conflicts; see ReleaseNode. With bound,
// only the grant n shows is released: a re-read after a 409 Conflict that shows
// another grant (another Node object of the name, or a later promotion) returns
// ErrNotHolder, since the evidence that decided the release was about n's grant.
//
// With noReboot (a reservation given back), the release is not recorded as the
// group's last reboot (AnnotationReleased): the minimum gap does not start again.
//
// still, if set, is asked about every read of the node just before its write (the
// first read is n itself): its error ends the release unmade.
func clearHold(ctx context.Context, client kubernetes.Interface, n *corev1.Node, clk clock.PassiveClock, bound, noReboot bool, still func(*corev1.Node) error) (*corev1.Node, Grant, error) {
	var g Grant
	want := grantOf(n)
	fresh := true
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		if !fresh {
			var err error
			if n, err = getNode(ctx, client, n.Name); err != nil {
				return err
			}
		}
		fresh = false
		st := lockOf(n)
		if st.State != StateRebooting {
			return ErrNotHolder
		}
		g = grantOf(n)
		if bound && !sameGrant(g, want) {
			return ErrNotHolder // the grant the release was decided on has ended
		}
		if still != nil {
			if err := still(n); err != nil {
				return err
			}
		}
		w := write{resourceVersion: n.ResourceVersion, state: StateReady, group: st.Group, since: clk.Now(), released: true,
			noReboot: noReboot, dropAutoscaler: autoscalerKeysSet(n)}
		if _, held := n.Annotations[AnnotationHold]; !st.WasUnschedulable && !held {
			w.unschedulable = new(false)
		}
		released, err := patchNode(ctx, client, n.Name, w)
		if err != nil {
			return apiError("release lock", err)
		}
		n = released
		return nil
	})
	if err != nil {
		return nil, Grant{}, err
	}
	return n, g, nil
}

// sameGrant reports whether a and b are one grant: one Node object, one promotion.
func sameGrant(a, b Grant) bool {
	return a.Node == b.Node && a.UID == b.UID && a.Group == b.Group && a.Promoted.Equal(b.Promoted) && a.BootID == b.BootID
}

// Release releases the lock node holds and uncordons it if we cordoned it; it returns
// ErrNotHolder if the node holds none. It is the operator's manual release.
func (l *Lock) Release(ctx context.Context, node string) error {
	n, err := l.get(ctx, node)
	if err != nil {
		return err
	}
	return l.release(ctx, n, l.log.With("node", node), releaseManual)
}

// release clears node's lock in one conditioned write, which also uncordons the node
// if we cordoned it: there is never a moment with one done and not the other. Every
// release but the operator's is bound to the grant n shows (see clearHold): it
// returns ErrNotHolder if that grant ended, even if the node holds another.
func (l *Lock) release(ctx context.Context, n *corev1.Node, log *slog.Logger, why releaseCause) error {
	return l.releaseIf(ctx, n, log, why, nil)
}

// releaseIf is release, made only while still (see clearHold) approves the node as
// read just before the write.
func (l *Lock) releaseIf(ctx context.Context, n *corev1.Node, log *slog.Logger, why releaseCause, still func(*corev1.Node) error) error {
	before := lockOf(n)
	n, g, err := clearHold(ctx, l.client, n, l.opts.Clock, why != releaseManual, why == releaseReservation, still)
	if err != nil {
		return err
	}
	l.drainer.Forget(n.Name)
	l.opts.Hooks.Released(ctx, g)
	rebooted := g.BootID == "" || n.Status.NodeInfo.BootID != g.BootID
	log.Info("reboot lock released", "by", string(why), "uncordoned", !before.WasUnschedulable,
		"heldFor", l.opts.Clock.Since(g.Promoted).Round(time.Second), "rebooted", rebooted)
	if why == releaseSteadyState {
		l.releases.WithLabelValues(l.groupLabel(g.Group), strconv.FormatBool(rebooted)).Inc()
		if !rebooted {
			log.Warn("released without a reboot: the boot ID is the one at the grant", "bootID", g.BootID)
			l.event(n.Name, corev1.EventTypeWarning, ReasonRebootNotObserved, "Release",
				"steady-state released the slot, but the node's boot ID is still "+g.BootID+": the node did not reboot")
		}
	}
	return nil
}

// grantOf reads the grant a holding node records.
func grantOf(n *corev1.Node) Grant {
	st := lockOf(n)
	return Grant{Node: n.Name, UID: n.UID, Group: st.Group, Promoted: st.Since, BootID: st.BootID}
}

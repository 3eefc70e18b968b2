package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Taking and giving back a reserved slot (reserve.go tells how slots are reserved).

// ReasonReservationExpired (Normal): a slot reserved for a node was given back, since
// its pre-reboot did not come by the reservation's deadline; the node was uncordoned
// if reboot-manager cordoned it.
const ReasonReservationExpired = "ReservationExpired"

// releaseReservation is the cause of a release that gives back an unclaimed
// reservation.
const releaseReservation releaseCause = "reservation-expired"

// testHookBeforeGiveBack, set by tests, runs between the give-back's fresh read and
// its conditioned write.
var testHookBeforeGiveBack func(node string)

// takeReservation is the node's own pre-reboot taking the slot reserved for it: it
// removes AnnotationReservedUntil from n (fresh), conditioned on n as read, so that
// either it or the give-back wins. A 409 Conflict is returned as is: the caller reads
// the node again and decides again.
func (a *acquisition) takeReservation(ctx context.Context, n *corev1.Node) (*corev1.Node, error) {
	taken, err := a.lock.patchMarks(ctx, n, "", map[string]any{AnnotationReservedUntil: nil})
	if err != nil {
		return nil, err
	}
	until, _ := ReservedUntil(n)
	a.log.Info("reserved slot taken by its node", "reservedUntil", until)
	a.lock.reservations.WithLabelValues(a.lock.groupLabel(lockOf(n).Group), "taken").Inc()
	return taken, nil
}

// errReservationKept ends a give-back whose fresh read shows a reservation that must
// stay: taken by its node, not yet past its deadline, or the node rebooted.
var errReservationKept = errors.New("reservation kept")

// giveBack releases the slot reserved for n (as the cache shows it) if a fresh read
// confirms, just before the conditioned release, that the same grant is still
// reserved, past its deadline, and the node has not rebooted since the grant.
func (l *Lock) giveBack(ctx context.Context, n *corev1.Node) {
	log := l.log.With("node", n.Name, "group", lockOf(n).Group)
	fresh, err := l.get(ctx, n.Name)
	if err != nil {
		if !errors.Is(err, ErrNotHolder) && !apierrors.IsNotFound(errors.Unwrap(err)) {
			log.Warn("cannot give back an expired reservation", "err", err)
		}
		return
	}
	g := grantOf(n)
	until, _ := ReservedUntil(fresh)
	err = l.releaseIf(ctx, fresh, log, releaseReservation, func(m *corev1.Node) error {
		if testHookBeforeGiveBack != nil {
			testHookBeforeGiveBack(m.Name)
		}
		u, reserved := ReservedUntil(m)
		switch {
		case !samePromotion(m, g):
			return ErrNotHolder
		case !reserved || !l.opts.Clock.Now().After(u):
			return errReservationKept
		case m.Status.NodeInfo.BootID != g.BootID:
			return errReservationKept // it rebooted anyway: its steady-state releases it
		}
		until = u
		return nil
	})
	switch {
	case errors.Is(err, ErrNotHolder), errors.Is(err, errReservationKept):
	case err != nil:
		log.Warn("cannot give back an expired reservation", "err", err)
	default:
		log.Info("reserved slot given back: its node did not ask by the deadline", "reservedUntil", until)
		l.reservations.WithLabelValues(l.groupLabel(g.Group), "given_back").Inc()
		l.event(n.Name, corev1.EventTypeNormal, ReasonReservationExpired, "Release", fmt.Sprintf(
			"slot of group %s reserved until %s given back: the node's pre-reboot did not come; uncordoned if reboot-manager cordoned it",
			g.Group, until.UTC().Format(time.RFC3339)))
	}
}

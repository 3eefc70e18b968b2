package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Claiming a slot on a waiting node's behalf (reserve.go tells when).

// newReservation returns the acquisition of a slot of group for node, on behalf of
// the reservation loop: it may wait for later claimants to withdraw for tieWait.
func (l *Lock) newReservation(node, group string) *acquisition {
	now := time.Now()
	until := l.opts.Clock.Now().Add(l.opts.ReservationTimeout)
	return &acquisition{
		lock:          l,
		name:          node,
		group:         group,
		log:           l.log.With("node", node, "group", group, "reservation", true),
		expires:       now.Add(tieWait),
		tieExpires:    now.Add(tieWait),
		reservedUntil: until,
	}
}

// errNotReservable ends a reservation attempt for a node that should not get one now,
// and lets the next waiter be tried.
var errNotReservable = errors.New("not reservable")

// reserve claims, checks and promotes the waiting node on its behalf, as a request
// would (acquire.go), after a fresh read confirms that it still waits with no request
// open, and after the admission a request would get. It reports whether the slot is
// now reserved for the node, and, if not, whether the next waiter may be tried (this
// one is not reservable or the policy refused it); a reservation leaves no claim of
// its own behind.
func (a *acquisition) reserve(ctx context.Context) (reserved, tryNext bool, err error) {
	defer func() {
		if a.claim != nil {
			a.withdraw(context.WithoutCancel(ctx))
		}
	}()
	l := a.lock
	n, err := l.get(ctx, a.name)
	if err != nil {
		return false, false, err
	}
	w, ok := WaiterOf(n)
	now := l.opts.Clock.Now()
	switch {
	case lockOf(n).State != StateReady:
		return false, false, nil // a request or another replica works on it
	case !ok || w.Group != a.group || w.Stale(now, l.opts.WaiterTimeout) || !NodeReady(n):
		return false, true, errNotReservable
	case w.Open(now):
		return false, false, nil // its request takes the slot
	}
	if err := a.admit(n); err != nil {
		return false, true, err
	}
	if err := a.drainGaveUp(ctx, n); err != nil {
		return false, true, err
	}
	claimed, err := a.write(context.WithoutCancel(ctx), n, write{state: StateClaiming, group: a.group}) // as a request's claim
	if err != nil {
		return false, false, err // a 409: the node changed; the next round decides again
	}
	a.claim = claimed
	for {
		v, _, err := a.check(ctx)
		if err != nil {
			return false, false, err
		}
		switch v {
		case promote:
			if err := a.admit(claimed); err != nil {
				return false, true, err
			}
			if err := l.orderFresh(ctx, a.group); err != nil {
				return false, true, err // the group order, on a fresh read
			}
			n, err := a.promote(ctx)
			if err != nil {
				return false, false, err
			}
			if until, ok := ReservedUntil(n); !ok || !until.Equal(a.reservedUntil) {
				return false, false, nil // conflict: someone else's write came first
			}
			a.log.Info("reboot slot reserved for a waiting node", "reservedUntil", a.reservedUntil, "waitingSince", w.Since)
			l.event(a.name, corev1.EventTypeNormal, ReasonSlotReserved, "Reserve", fmt.Sprintf(
				"slot of group %s reserved while the node had no pre-reboot request open: cordoned and drained now; given back if its pre-reboot does not come by %s",
				a.group, a.reservedUntil.UTC().Format(time.RFC3339)))
			l.reservations.WithLabelValues(l.groupLabel(a.group), "reserved").Inc()
			l.drainer.Start(n)
			return true, false, nil
		case awaitLater:
			if err := l.sleep(ctx, 200*time.Millisecond, a.tieExpires, l.groupChanged.wait(a.group), nil); err != nil {
				return false, false, err
			}
		default:
			return false, false, nil
		}
	}
}

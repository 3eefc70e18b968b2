package lock

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Reservations: a slot that frees while its group's waiters have no request open
// would stay idle until one of them polls again, up to a Zincati poll period later
// (behind a proxy that cuts idle requests, every handover). So every replica watches
// for a group whose free slot no open request has taken within
// Options.ReservationGrace, and reserves it for the group's first fresh waiter in the
// lock's order (Queue) that is not asking right now: the same admission as a
// request's (the API server answers, Policy.Admit, a drain that gave up), then the
// same claim, check and promotion as a request's, on the waiter's behalf, so that the
// k-slot argument of doc.go holds unchanged. The promotion writes
// AnnotationReservedUntil (now + Options.ReservationTimeout) with the hold, and the
// drain starts at once.
//
// The node's next pre-reboot finds it holding, removes AnnotationReservedUntil in a
// write conditioned on the node as read, and goes down a holder's path: the drain,
// the fresh checks, the 2xx. A reservation still there after its deadline is given
// back by any replica: a fresh read that shows the same Node object, the same
// promotion, still reserved, past the deadline and not rebooted, then the release
// (uncordoning what we cordoned) conditioned on that read. The request's write and
// the give-back's are both conditioned on the same resourceVersion: exactly one wins.

// DefaultReservationTimeout is Options.ReservationTimeout's default: Zincati polls
// every 300 s plus up to 10 % (330 s), and a margin for the poll's own wait and a
// slow network makes 7 minutes.
const DefaultReservationTimeout = 7 * time.Minute

// DefaultReservationGrace is Options.ReservationGrace's default: an open request
// takes a free slot within a few API round trips (milliseconds), so a slot free for
// this long has no request coming for it. Were one still coming, the claim, check
// and promotion decide between it and the reservation, as between two requests.
const DefaultReservationGrace = time.Second

// ReasonSlotReserved (Normal): a free slot was reserved for a waiting node, which was
// cordoned and is drained before its next pre-reboot.
const ReasonSlotReserved = "SlotReserved"

// byWaiting indexes the node cache by the group of the waiters (nodes in state Ready
// with AnnotationWaitingSince), so that the reservation loop reads only them.
const byWaiting = "waiting"

func waitingGroup(obj any) ([]string, error) {
	if n, ok := obj.(*corev1.Node); ok {
		if w, ok := WaiterOf(n); ok {
			return []string{w.Group}, nil
		}
	}
	return nil, nil
}

// ReservedUntil returns the deadline of the reservation node holds its slot under,
// and whether it holds one (AnnotationReservedUntil on a holder).
func ReservedUntil(n *corev1.Node) (time.Time, bool) {
	v, ok := n.Annotations[AnnotationReservedUntil]
	if !ok || lockOf(n).State != StateRebooting {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, true // unreadable: past, so that it is given back
	}
	return t, true
}

// reserveLoop runs reserveRound on every change of the lock and when its timer says,
// until ctx ends, while the API server answers.
func (l *Lock) reserveLoop(ctx context.Context) {
	free := map[string]time.Time{}
	for {
		wake := l.changed.wait() // before the cache is read, so that no change is missed
		next := l.opts.ReservationGrace
		if l.apiDown() == nil {
			next = l.reserveRound(ctx, free)
		}
		t := time.NewTimer(max(next, reserveCoalesce))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-wake:
			// Changes come in bursts (every request writes its waiting marks): one
			// round after a burst reads the cache once, not once per change.
			t.Reset(reserveCoalesce) // Go 1.23 timers: no stale tick to drain
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		case <-t.C:
		}
	}
}

// reserveCoalesce is the least time between two rounds of the reservation loop: a
// tenth of DefaultReservationGrace, so that a free slot waits no longer for it.
const reserveCoalesce = 100 * time.Millisecond

// reserveRound gives back the reservations past their deadline, then reserves the
// slots that have been free for Options.ReservationGrace in groups whose waiters have
// none open. free is when this replica first saw each group's slot free (its clock),
// kept between rounds. It returns how long until it should look again.
func (l *Lock) reserveRound(ctx context.Context, free map[string]time.Time) time.Duration {
	now := l.opts.Clock.Now()
	next := l.opts.ReservationGrace
	idx := l.nodes.GetIndexer()
	taken := map[string]int{} // holders and live claims, by group
	for _, g := range idx.ListIndexFuncValues(byGroup) {
		objs, _ := idx.ByIndex(byGroup, g)
		for _, o := range objs {
			n := o.(*corev1.Node)
			st := lockOf(n)
			if staleClaim(st, now, l.opts.StaleClaimAge) {
				continue
			}
			taken[g]++
			if until, ok := ReservedUntil(n); ok {
				if now.After(until) {
					l.giveBack(ctx, n)
				} else {
					next = min(next, until.Sub(now)+time.Millisecond)
				}
			}
		}
	}
	waiting := map[string]bool{}
	for _, g := range idx.ListIndexFuncValues(byWaiting) {
		waiting[g] = true
		if taken[g] >= l.slots(g) {
			delete(free, g) // full: its waiters are not even read
			continue
		}
		objs, _ := idx.ByIndex(byWaiting, g)
		nodes := make([]*corev1.Node, len(objs))
		for i, o := range objs {
			nodes[i] = o.(*corev1.Node)
		}
		var closed []Waiter
		for _, w := range Queue(nodes, now, l.opts.WaiterTimeout)[g] {
			if !w.Open(now) {
				closed = append(closed, w)
			}
		}
		if len(closed) == 0 {
			delete(free, g)
			continue
		}
		since, ok := free[g]
		if !ok {
			free[g] = now
			continue
		}
		if wait := l.opts.ReservationGrace - now.Sub(since); wait > 0 {
			next = min(next, wait)
			continue
		}
		if !l.reserveFor(ctx, g, closed) {
			free[g] = now // nobody could take it: look again after another grace
		}
	}
	for g := range free {
		if !waiting[g] {
			delete(free, g)
		}
	}
	return next
}

// reserveFor reserves a slot of group for the first of waiters (in the lock's order,
// none with a request open as the cache shows them) that is Ready (a node whose
// kubelet is not would only be cordoned for nothing) and that the admission lets in,
// first as the cache shows it (no API request for a refused waiter), then as a fresh
// read does. It stops at the first that the check or a conflict stops: the
// next round decides again. It reports whether it reserved one.
func (l *Lock) reserveFor(ctx context.Context, group string, waiters []Waiter) bool {
	for _, w := range waiters {
		a := l.newReservation(w.Node, group)
		cached, ok := l.cachedNode(w.Node)
		if !ok || !NodeReady(cached) || a.admit(cached) != nil {
			continue // refused as the cache shows it: no API request for it
		}
		ok, next, err := a.reserve(ctx)
		switch {
		case ok:
			return true
		case err != nil:
			a.log.Debug("slot not reserved", "err", err)
		}
		if !next {
			return false
		}
	}
	return false
}

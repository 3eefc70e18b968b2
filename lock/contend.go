package lock

import (
	"context"
	"errors"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Fallback timers of awaitFreeSlot: a waiter looks again at least this often (up to
// 50% more) even if nothing woke it. The first waiters of a group (fewer of this
// replica's requests before them than slots) look often, for what no event announces:
// a claim going stale with time, a missed event. The others wait behind this
// replica's earlier requests, and only those requests leaving (contend) can let them
// go, which wakes them: their timer is only a safety net, long so that thousands of
// held requests cost no CPU.
const (
	firstWaiterPoll  = 5 * time.Second
	behindWaiterPoll = 30 * time.Second
)

// slotWaiter is one request waiting in awaitFreeSlot: wake is closed when it should
// look again.
type slotWaiter struct {
	name string
	wake chan struct{}
}

// awaitFreeSlot waits, without any API request, until the cache shows a slot that may
// be free for us: fewer nodes of the group before us than slots, counting the holders,
// the live claims by earlier names, and this replica's other requests seeking a slot
// for earlier names. The last keeps a herd from forming: when a slot frees, only the
// first waiters of each replica are woken and re-claim, not all of them (wakeGroup).
// It returns at once, too, when the cache shows our own node holding: granted by
// another request of it or reserved for it (reserve.go), a slot the requests before
// us wait for in vain; the caller reads the node and goes down the holder's path.
func (a *acquisition) awaitFreeSlot(ctx context.Context) error {
	l := a.lock
	for {
		slots := l.slots(a.group)
		own := l.nodeChanged.wait(a.name) // before the scan, as queueUp
		w, taken := a.queueUp()           // before the scan, so that no change is missed
		behind := len(taken) >= slots
		if c, ok := l.cachedNode(a.name); ok && lockOf(c).State == StateRebooting {
			l.leaveQueue(a.group, w)
			return nil
		}
		objs, _ := l.nodes.GetIndexer().ByIndex(byGroup, a.group)
		for _, o := range objs {
			n := o.(*corev1.Node)
			st := lockOf(n)
			if n.Name != a.name && (st.State == StateRebooting || st.State == StateClaiming && n.Name < a.name && !a.isStale(st)) {
				taken[n.Name] = true
			}
		}
		if len(taken) < slots {
			l.leaveQueue(a.group, w)
			return nil
		}
		every := firstWaiterPoll
		if behind {
			every = behindWaiterPoll
		}
		err := l.sleep(ctx, every, a.expires, w.wake, own)
		l.leaveQueue(a.group, w)
		if err != nil {
			return err
		}
	}
}

// queueUp registers the request as a waiter of its group, to be woken by wakeGroup,
// and returns the names, before ours, of this replica's other requests of our group
// that seek a slot.
func (a *acquisition) queueUp() (*slotWaiter, map[string]bool) {
	l := a.lock
	w := &slotWaiter{name: a.name, wake: make(chan struct{})}
	l.contendersMu.Lock()
	defer l.contendersMu.Unlock()
	ws := l.slotWaiters[a.group]
	if ws == nil {
		ws = map[*slotWaiter]struct{}{}
		l.slotWaiters[a.group] = ws
	}
	ws[w] = struct{}{}
	earlier := map[string]bool{}
	for name := range l.contenders[a.group] {
		if name < a.name {
			earlier[name] = true
		}
	}
	return w, earlier
}

// leaveQueue unregisters w, if wakeGroup has not already.
func (l *Lock) leaveQueue(group string, w *slotWaiter) {
	l.contendersMu.Lock()
	defer l.contendersMu.Unlock()
	if ws := l.slotWaiters[group]; ws != nil {
		delete(ws, w)
		if len(ws) == 0 {
			delete(l.slotWaiters, group)
		}
	}
}

// wakeGroup wakes the requests of the group waiting for a slot that may now get
// one: those with fewer of this replica's requests seeking a slot before them than the
// group's slots. The others cannot go whatever the nodes show, until one of the
// requests before them leaves (contend wakes the group again then). It also wakes the
// group's claimants waiting for later claimants to withdraw (groupChanged).
func (l *Lock) wakeGroup(group string) {
	l.groupChanged.fire(group)
	slots := l.slots(group)
	l.contendersMu.Lock()
	defer l.contendersMu.Unlock()
	ws := l.slotWaiters[group]
	if len(ws) == 0 {
		return
	}
	names := make([]string, 0, len(l.contenders[group]))
	for name := range l.contenders[group] {
		names = append(names, name)
	}
	slices.Sort(names)
	for w := range ws {
		if earlier, _ := slices.BinarySearch(names, w.name); earlier < slots {
			close(w.wake)
			delete(ws, w)
		}
	}
	if len(ws) == 0 {
		delete(l.slotWaiters, group)
	}
}

// contend counts the request in, or out of, this replica's requests seeking a slot.
// Counting out wakes the waiters that it held back.
func (a *acquisition) contend(on bool) {
	if a.contending == on {
		return
	}
	a.contending = on
	l := a.lock
	l.contendersMu.Lock()
	g := l.contenders[a.group]
	if on {
		if g == nil {
			g = map[string]int{}
			l.contenders[a.group] = g
		}
		g[a.name]++
	} else if g[a.name]--; g[a.name] == 0 {
		delete(g, a.name)
		if len(g) == 0 {
			delete(l.contenders, a.group)
		}
	}
	l.contendersMu.Unlock()
	if !on {
		l.wakeGroup(a.group)
		l.changed.fire()
	}
}

// orHeld turns an expired wait for a slot into the *HeldError that says who holds it.
func orHeld(err error, held *HeldError) error {
	if errors.Is(err, errExpired) {
		return held
	}
	return err
}

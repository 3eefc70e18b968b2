package lock

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// awaitFreeSlot waits, without any API request, until the cache shows a slot that may
// be free for us: fewer nodes of the group before us than slots, counting the holders,
// the live claims by earlier names, and this replica's other requests seeking a slot
// for earlier names. The last keeps a herd from forming: when a slot frees, only the
// first waiters of each replica re-claim, not all of them.
func (a *acquisition) awaitFreeSlot(ctx context.Context) error {
	for {
		wake := a.lock.changed.wait() // before the scan, so that no change is missed
		taken := a.earlierContenders()
		objs, _ := a.lock.nodes.GetIndexer().ByIndex(byGroup, a.group)
		for _, o := range objs {
			n := o.(*corev1.Node)
			st := lockOf(n)
			if n.Name != a.name && (st.State == StateRebooting || st.State == StateClaiming && n.Name < a.name && !a.isStale(st)) {
				taken[n.Name] = true
			}
		}
		if len(taken) < a.lock.slots(a.group) {
			return nil
		}
		if err := a.lock.sleep(ctx, 5*time.Second, a.expires, wake, nil); err != nil {
			return err
		}
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
	}
	l.contendersMu.Unlock()
	if !on {
		l.changed.fire()
	}
}

// earlierContenders returns the names, before ours, of this replica's other requests
// of our group that seek a slot.
func (a *acquisition) earlierContenders() map[string]bool {
	a.lock.contendersMu.Lock()
	defer a.lock.contendersMu.Unlock()
	out := map[string]bool{}
	for name := range a.lock.contenders[a.group] {
		if name < a.name {
			out[name] = true
		}
	}
	return out
}

// orHeld turns an expired wait for a slot into the *HeldError that says who holds it.
func orHeld(err error, held *HeldError) error {
	if errors.Is(err, errExpired) {
		return held
	}
	return err
}

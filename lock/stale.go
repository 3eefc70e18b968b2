package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Stale holders: with Policy.StaleHolderAfter above 0, a holder that rebooted and has
// been Ready that long without calling steady-state is released.

// releaseStale releases every holder that rebooted (its boot ID changed since the
// grant) and has been back (Ready with that new boot ID) for longer than after
// without calling steady-state: its Zincati cannot reach us, and the slot would stay
// taken forever. "Back for longer than after" is measured on this replica's clock,
// from when it first saw the node back: the kubelet's condition times come from
// another clock, in whole seconds.
func (l *Lock) releaseStale(ctx context.Context, after time.Duration) {
	now := l.opts.Clock.Now()
	seen := map[types.UID]time.Time{}
	for _, obj := range l.nodes.GetIndexer().List() {
		n := obj.(*corev1.Node)
		st := lockOf(n)
		if !st.holding() || st.BootID == "" || !back(n, grantOf(n)) {
			continue
		}
		key := types.UID(string(n.UID) + "/" + st.Since.String())
		since, ok := l.backSince[key]
		if !ok {
			since = now
		}
		seen[key] = since
		if now.Sub(since) < after || now.Sub(st.Since) < after {
			continue
		}
		log := l.log.With("node", n.Name, "group", st.Group)
		err := l.release(ctx, n, log, releaseStale)
		switch {
		case errors.Is(err, ErrNotHolder):
		case err != nil:
			log.Warn("cannot release a stale holder", "err", err)
		default:
			l.event(n.Name, corev1.EventTypeWarning, ReasonStaleHolderReleased, "Release",
				fmt.Sprintf("rebooted and Ready for %s without calling steady-state (Zincati cannot reach reboot-manager?): slot of group %s released",
					now.Sub(since).Round(time.Second), st.Group))
		}
	}
	l.backSince = seen // forgets the grants that ended
}

// staleLoop runs releaseStale while StaleHolderAfter is set, every quarter of it, and
// removeStaleWaiters always, every quarter of Options.WaiterTimeout; each between 1
// and 15 seconds (the policy may change at run time, so the period does).
func (l *Lock) staleLoop(ctx context.Context) {
	for {
		period := l.opts.WaiterTimeout / 4
		if after := l.opts.Policy.StaleHolderAfter(); after > 0 {
			period = min(period, after/4)
		}
		t := time.NewTimer(min(max(period, time.Second), 15*time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if l.apiDown() != nil {
			continue
		}
		if after := l.opts.Policy.StaleHolderAfter(); after > 0 {
			l.releaseStale(ctx, after)
		}
		l.removeStaleWaiters(ctx)
	}
}

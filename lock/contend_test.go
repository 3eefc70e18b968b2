package lock

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// woken reports, by node name, which of ws wakeGroup has woken.
func woken(ws map[string]*slotWaiter) map[string]bool {
	out := map[string]bool{}
	for name, w := range ws {
		select {
		case <-w.wake:
			out[name] = true
		default:
		}
	}
	return out
}

// TestWakeGroupWakesOnlyItsFirstWaiters holds waiters in two groups, as awaitFreeSlot
// does, and fires one group as a lock change in it does: only the waiters of that
// group with fewer earlier requests of this replica than slots wake; the other
// group's waiters and the later ones sleep on. When the first request leaves
// (contend), the next one wakes. Before the signal was per group, every held request
// of every group woke on every change.
func TestWakeGroupWakesOnlyItsFirstWaiters(t *testing.T) {
	l, err := New(nil, nil, Options{Policy: FixedSlots(2)})
	require.NoError(t, err)
	acqs := map[string]*acquisition{}
	ws := map[string]*slotWaiter{}
	for _, g := range []string{"a", "b"} {
		for i := range 5 {
			name := fmt.Sprintf("%s-node-%d", g, i)
			a := &acquisition{lock: l, name: name, group: g}
			a.contend(true)
			acqs[name] = a
		}
	}
	for name, a := range acqs {
		ws[name], _ = a.queueUp()
	}
	require.Empty(t, woken(ws), "nothing fired yet")

	l.wakeGroup("a") // a release in group a, as nodeUpdated sees it
	require.Equal(t, map[string]bool{"a-node-0": true, "a-node-1": true}, woken(ws),
		"the group's 2 first waiters (2 slots), not its later ones, not group b's")

	// a-node-0 leaves (granted): it wakes group a again; a-node-2 is now among the
	// first two.
	for _, name := range []string{"a-node-0", "a-node-1"} {
		l.leaveQueue("a", ws[name])
		ws[name], _ = acqs[name].queueUp()
	}
	acqs["a-node-0"].contend(false)
	l.leaveQueue("a", ws["a-node-0"])
	delete(ws, "a-node-0")
	require.Equal(t, map[string]bool{"a-node-1": true, "a-node-2": true}, woken(ws))

	for name, w := range ws {
		l.leaveQueue(name[:1], w)
	}
	require.Empty(t, l.slotWaiters, "every waiter left")
}

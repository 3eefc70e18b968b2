package lock

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// awaitCachedReady waits until l's cache shows node Ready (or not).
func awaitCachedReady(t *testing.T, l *Lock, node string, ready bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		obj, ok, _ := l.nodes.GetIndexer().GetByKey(node)
		return ok && NodeReady(obj.(*corev1.Node)) == ready
	}, 20*time.Second, 10*time.Millisecond, "%s ready=%v in the cache", node, ready)
}

// With the health gate, steady-state from a node still coming up keeps the slot: the
// request is held until the node is Ready, or answered node_not_ready after Wait.
// Releases count whether the boot ID changed.
func TestReleaseWaitsUntilReady(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "health", 2, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Wait: 2 * time.Second, Policy: testPolicy{}})
	awaitCached(t, l, f)
	a, b := f.names[0], f.names[1]

	require.NoError(t, l.PreReboot(ctx, f.params(a, "default")))
	rebooted := make(chan error, 1)
	go func() { rebooted <- env.Kubelet.Reboot(ctx, a, 5*time.Second) }()
	awaitCachedReady(t, l, a, false)

	start := time.Now()
	released, err := l.SteadyState(ctx, f.params(a, "default"))
	assert.ErrorIs(t, err, fleetlock.ErrNodeNotReady)
	assert.False(t, released)
	assert.GreaterOrEqual(t, time.Since(start), 2*time.Second, "held for Wait")
	st, _ := nodeLockState(t, env.Client, a)
	assert.Equal(t, StateRebooting, st.State, "the slot stays held")

	type answer struct {
		released bool
		err      error
		at       time.Time
	}
	answered := make(chan answer, 1)
	go func() {
		// Held until Ready; Wait is 2s, so ask again until it is.
		for {
			released, err := l.SteadyState(ctx, f.params(a, "default"))
			if err == nil {
				answered <- answer{released, err, time.Now()}
				return
			}
		}
	}()
	require.NoError(t, <-rebooted)
	readyAt := time.Now()
	select {
	case ans := <-answered:
		assert.True(t, ans.released)
		// Reboot sets Ready, then lifts the not-ready taint, then returns: a release
		// woken by the Ready change itself can come before readyAt.
		t.Logf("released %s after Reboot returned", ans.at.Sub(readyAt).Round(time.Microsecond))
	case <-time.After(eventWait):
		t.Fatal("not released within eventWait of the node Ready")
	}

	// b is released without having rebooted, once its kubelet was seen alive with the
	// old boot ID (two Lease renewals: a longer Wait): counted, not hidden.
	l2 := startLock(t, env.Client, Options{Wait: 20 * time.Second, Policy: testPolicy{}})
	awaitCached(t, l2, f)
	require.NoError(t, l2.PreReboot(ctx, f.params(b, "default")))
	released, err = l2.SteadyState(ctx, f.params(b, "default"))
	require.NoError(t, err)
	require.True(t, released)
	assert.NoError(t, testutil.CollectAndCompare(l2, strings.NewReader(`
# HELP rebootmanager_releases_total Slots released by steady-state, by group and by whether the node's boot ID had changed (rebooted true or false).
# TYPE rebootmanager_releases_total counter
rebootmanager_releases_total{group="default",rebooted="false"} 1
`), "rebootmanager_releases_total"))
	assert.NoError(t, testutil.CollectAndCompare(l, strings.NewReader(`
# HELP rebootmanager_releases_total Slots released by steady-state, by group and by whether the node's boot ID had changed (rebooted true or false).
# TYPE rebootmanager_releases_total counter
rebootmanager_releases_total{group="default",rebooted="true"} 1
`), "rebootmanager_releases_total"))
}

// A holder that rebooted and stays Ready without calling steady-state is released
// after StaleHolderAfter; one that has not rebooted is left alone.
func TestStaleHolderReleased(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "stale-holder", 2, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Wait: time.Second, Policy: testPolicy{slots: 2, staleAfter: 3 * time.Second}})
	awaitCached(t, l, f)
	silent, waiting := f.names[0], f.names[1]
	require.NoError(t, l.PreReboot(ctx, f.params(silent, "default")))
	require.NoError(t, l.PreReboot(ctx, f.params(waiting, "default")))
	require.NoError(t, env.Kubelet.Reboot(ctx, silent, time.Second))
	back := time.Now()

	awaitState(t, l, silent, StateReady)
	took := time.Since(back)
	t.Logf("stale holder released %s after it was Ready again", took.Round(time.Millisecond))
	assert.GreaterOrEqual(t, took, 2*time.Second, "not before StaleHolderAfter (3s, less the cache's lag)")
	st, _ := nodeLockState(t, env.Client, waiting)
	assert.Equal(t, StateRebooting, st.State, "a holder that did not reboot keeps its slot")
}

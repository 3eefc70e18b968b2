package lock

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Class 3 (issue 14, Zincati#239, kubernetes#69786): steady-state from a holder whose
// Node still shows the Ready and the boot ID of before the grant (its kubelet has
// posted nothing since: a reboot with no graceful shutdown is never marked NotReady)
// is held, and the next node of the one-slot group is not granted, until the node
// posts a new boot ID and Ready; then it is released, counted rebooted="true".
func TestSteadyStateBeforeReboot(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	first, second := "back-a-"+c.id, "back-b-"+c.id
	_, firstID := c.addNode(first, "")
	_, secondID := c.addNode(second, "")
	l, _ := c.lock(Options{Wait: 30 * time.Second})
	awaitCachedName(t, l, first)
	awaitCachedName(t, l, second)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: firstID, Group: "default"}))

	c.env.Kubelet.Freeze(first) // rebooting: Ready and the old boot ID stay on the Node
	type answer struct {
		released bool
		err      error
		at       time.Time
	}
	steady := make(chan answer, 1)
	asked := time.Now()
	go func() {
		released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: firstID, Group: "default"})
		steady <- answer{released, err, time.Now()}
	}()
	next := make(chan answer, 1)
	go func() {
		err := l.PreReboot(ctx, fleetlock.ClientParams{ID: secondID, Group: "default"})
		next <- answer{err == nil, err, time.Now()}
	}()
	select {
	case a := <-steady:
		t.Fatalf("steady-state answered %s after asking, before the node was back: released=%v err=%v",
			a.at.Sub(asked).Round(time.Millisecond), a.released, a.err)
	case a := <-next:
		t.Fatalf("the next node was answered while the holder was still rebooting: %v", a.err)
	case <-time.After(6 * time.Second): // three Lease renewals of a live kubelet
	}
	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, first, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, StateRebooting, lockOf(n).State, "the slot stays held")

	back := time.Now()
	require.NoError(t, c.env.Kubelet.Boot(ctx, first))
	a := <-steady
	t.Logf("steady-state answered %s after the node was back", a.at.Sub(back).Round(time.Millisecond))
	require.NoError(t, a.err)
	assert.True(t, a.released)
	assert.InDelta(t, 1, testutil.ToFloat64(l.releases.WithLabelValues("default", "true")), 0)
	assert.InDelta(t, 0, testutil.ToFloat64(l.releases.WithLabelValues("default", "false")), 0)
	b := <-next
	require.NoError(t, b.err, "the next node goes once the holder is back")
	assert.False(t, b.at.Before(a.at), "granted after the release")
}

// Class 3: a kubelet seen alive after steady-state arrived (its Lease renewed since)
// that still reports the boot ID of the grant shows that the machine did not reboot:
// the slot is released then (refusing would deadlock Zincati), with the
// RebootNotObserved Event, and counted rebooted="false".
func TestSteadyStateWithoutReboot(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "noreboot-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 30 * time.Second})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	asked := time.Now()
	released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	t.Logf("released after %s", time.Since(asked).Round(time.Millisecond))
	require.NoError(t, err)
	assert.True(t, released)
	assert.InDelta(t, 1, testutil.ToFloat64(l.releases.WithLabelValues("default", "false")), 0)
	c.env.AwaitNodeEvent(t, name, ReasonRebootNotObserved, "did not reboot")
}

// Class 3: a holder whose kubelet stays silent (no Lease renewal, no new boot ID)
// after steady-state keeps its slot: node_not_ready after Wait.
func TestSteadyStateKubeletSilent(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "silent-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 5 * time.Second})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	c.env.Kubelet.Freeze(name)
	t.Cleanup(func() { _ = c.env.Kubelet.Boot(ctx, name) })
	released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	assert.False(t, released)
	require.ErrorIs(t, err, fleetlock.ErrNodeNotReady)
	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, StateRebooting, lockOf(n).State, "the slot stays held")
}

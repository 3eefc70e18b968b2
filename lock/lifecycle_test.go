package lock

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// Our cordon is undone on release; an operator's cordon survives a full cycle.
func TestCordonOnlyWhatWeCordoned(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ours := newFleet(t, env, "cordon-ours", 1, simkubelet.NodeOptions{})
	operators := newFleet(t, env, "cordon-operator", 1, simkubelet.NodeOptions{Unschedulable: true})
	l := startLock(t, env.Client, Options{Wait: time.Second})
	awaitCached(t, l, ours)
	awaitCached(t, l, operators)

	for _, tc := range []struct {
		f                fleet
		wasUnschedulable bool
	}{{ours, false}, {operators, true}} {
		name := tc.f.names[0]
		require.NoError(t, l.PreReboot(ctx, tc.f.params(name, "default")))
		st, unschedulable := nodeLockState(t, env.Client, name)
		assert.Equal(t, StateRebooting, st.State)
		assert.True(t, unschedulable, "%s is cordoned while it holds", name)
		assert.Equal(t, tc.wasUnschedulable, st.WasUnschedulable)

		awaitState(t, l, name, StateRebooting)
		require.NoError(t, env.Kubelet.Reboot(ctx, name, 0))
		released, err := l.SteadyState(ctx, tc.f.params(name, "default"))
		require.NoError(t, err)
		assert.True(t, released)
		st, unschedulable = nodeLockState(t, env.Client, name)
		assert.Equal(t, StateReady, st.State)
		assert.Equal(t, tc.wasUnschedulable, unschedulable, "%s: cordon after release", name)
	}
}

// A holder asking again costs no write (one GET confirms it still holds before it is
// told to reboot); steady-state of a node that holds nothing costs no API request.
func TestRepeatedCallsAreNoOps(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "noop", 2, simkubelet.NodeOptions{})
	cfg, counter := env.CountingConfig()
	l := startLock(t, kubernetes.NewForConfigOrDie(cfg), Options{Wait: time.Second})
	awaitCached(t, l, f)
	holder, other := f.names[0], f.names[1]

	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)
	before := resourceRequests(counter)
	for range 5 {
		require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")), "re-entrant pre-reboot")
	}
	after := resourceRequests(counter)
	assert.Equal(t, before["get nodes"]+10, after["get nodes"], "two GETs per re-entrant pre-reboot: the hold confirmed (the cache may not show a release yet), and the read before the 2xx")
	delete(after, "get nodes")
	delete(before, "get nodes")
	assert.Equal(t, before, after, "no write for re-entrant pre-reboot")

	before = resourceRequests(counter)
	for range 5 {
		released, err := l.SteadyState(ctx, f.params(other, "default"))
		require.NoError(t, err)
		assert.False(t, released)
		released, err = l.SteadyState(ctx, fleetlock.ClientParams{ID: "0123456789abcdef0123456789abcdef", Group: "default"})
		require.NoError(t, err)
		assert.False(t, released, "unknown ID: unlock-if-held")
	}
	assert.Equal(t, before, resourceRequests(counter), "no API request for no-op steady-state")

	require.NoError(t, env.Kubelet.Reboot(ctx, holder, 0))
	released, err := l.SteadyState(ctx, f.params(holder, "default"))
	require.NoError(t, err)
	require.True(t, released)
	awaitState(t, l, holder, StateReady)
	before = resourceRequests(counter)
	for range 5 {
		released, err := l.SteadyState(ctx, f.params(holder, "default"))
		require.NoError(t, err)
		assert.False(t, released)
	}
	assert.Equal(t, before, resourceRequests(counter), "repeated steady-state after release costs nothing")
}

// A claim older than StaleClaimAge (its replica crashed) is removed by the next check,
// and does not block a grant.
func TestStaleClaimRemoved(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "stale", 2, simkubelet.NodeOptions{})
	crashed, asker := f.names[0], f.names[1] // the stale claim comes first alphabetically
	n, err := env.Client.CoreV1().Nodes().Get(ctx, crashed, metav1.GetOptions{})
	require.NoError(t, err)
	_, err = env.Client.CoreV1().Nodes().Patch(ctx, crashed, "application/merge-patch+json",
		write{resourceVersion: n.ResourceVersion, state: StateClaiming, group: "default", since: time.Now().Add(-2 * time.Minute)}.patch(),
		metav1.PatchOptions{})
	require.NoError(t, err)

	l := startLock(t, env.Client, Options{Wait: 2 * time.Second, StaleClaimAge: time.Minute})
	awaitCached(t, l, f)
	require.NoError(t, l.PreReboot(ctx, f.params(asker, "default")))
	st, _ := nodeLockState(t, env.Client, crashed)
	assert.Equal(t, StateReady, st.State, "stale claim removed")
	st, _ = nodeLockState(t, env.Client, asker)
	assert.Equal(t, StateRebooting, st.State)
}

// A fresh claim by an earlier name is respected: the later node is refused.
func TestLiveEarlierClaimBlocks(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "liveclaim", 2, simkubelet.NodeOptions{})
	claimer, asker := f.names[0], f.names[1]
	n, err := env.Client.CoreV1().Nodes().Get(ctx, claimer, metav1.GetOptions{})
	require.NoError(t, err)
	_, err = env.Client.CoreV1().Nodes().Patch(ctx, claimer, "application/merge-patch+json",
		write{resourceVersion: n.ResourceVersion, state: StateClaiming, group: "default", since: time.Now()}.patch(),
		metav1.PatchOptions{})
	require.NoError(t, err)
	l := startLock(t, env.Client, Options{Wait: 200 * time.Millisecond})
	awaitCached(t, l, f)
	err = l.PreReboot(ctx, f.params(asker, "default"))
	var held *HeldError
	require.ErrorAs(t, err, &held)
	assert.Equal(t, []string{claimer}, held.Ahead)
	assert.ErrorIs(t, err, fleetlock.ErrLockHeld)
	st, _ := nodeLockState(t, env.Client, asker)
	assert.Equal(t, StateReady, st.State, "the refused request left no claim")
}

// A holder whose Node is deleted frees its slot.
func TestDeletedHolderFreesSlot(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "deleted", 2, simkubelet.NodeOptions{})
	gone, next := f.names[0], f.names[1]
	l := startLock(t, env.Client, Options{Wait: 200 * time.Millisecond})
	awaitCached(t, l, f)
	require.NoError(t, l.PreReboot(ctx, f.params(gone, "default")))
	awaitState(t, l, gone, StateRebooting)
	var held *HeldError
	require.ErrorAs(t, l.PreReboot(ctx, f.params(next, "default")), &held)
	assert.Equal(t, []string{gone}, held.Holders)

	require.NoError(t, env.Client.CoreV1().Nodes().Delete(ctx, gone, metav1.DeleteOptions{}))
	require.NoError(t, l.PreReboot(ctx, f.params(next, "default")))
}

// A claim removed by someone else (a stale-claim cleaner) can never be promoted: the
// promotion is conditioned on the claim and fails with a conflict.
func TestRemovedClaimNeverPromoted(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "removed", 1, simkubelet.NodeOptions{})
	name := f.names[0]
	l := startLock(t, env.Client, Options{Wait: time.Second})
	awaitCached(t, l, f)
	n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	r := &acquisition{lock: l, name: name, group: "default", log: l.log}
	claimed, err := r.write(ctx, n, write{state: StateClaiming, group: "default"})
	require.NoError(t, err)
	r.claim = claimed
	// Another replica takes the claim for stale and removes it, conditioned on it.
	require.True(t, r.removeStaleClaim(ctx, claimed))

	after, err := r.promote(ctx)
	require.NoError(t, err)
	assert.Nil(t, r.claim, "the request knows its claim is gone")
	assert.Equal(t, StateReady, lockOf(after).State)
	st, unschedulable := nodeLockState(t, env.Client, name)
	assert.Equal(t, StateReady, st.State, "not promoted")
	assert.False(t, unschedulable, "not cordoned")

	// The write the promotion makes is refused outright by the API server.
	_, err = l.patch(ctx, name, write{resourceVersion: claimed.ResourceVersion, state: StateRebooting, group: "default", since: time.Now()})
	assert.True(t, apierrors.IsConflict(err), "want 409, got %v", err)
}

// IDs that match no node are refused; IDs that match two nodes are never granted.
func TestUnknownAndAmbiguousIDs(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	machineID := simkubelet.RandomID()
	f := newFleet(t, env, "twin", 2, simkubelet.NodeOptions{})
	for _, name := range f.names {
		n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		n.Status.NodeInfo.MachineID = machineID
		_, err = env.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		require.NoError(t, err)
	}
	l := startLock(t, env.Client, Options{Wait: time.Second})
	id, err := fleetlock.ZincatiID(machineID)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := l.resolve(id)
		return errors.Is(err, fleetlock.ErrAmbiguousNode)
	}, 10*time.Second, 10*time.Millisecond)

	err = l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	assert.ErrorIs(t, err, fleetlock.ErrAmbiguousNode)
	assert.ErrorContains(t, err, f.names[0])
	_, err = l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	assert.ErrorIs(t, err, fleetlock.ErrAmbiguousNode)

	err = l.PreReboot(ctx, fleetlock.ClientParams{ID: "ffffffffffffffffffffffffffffffff", Group: "default"})
	assert.ErrorIs(t, err, fleetlock.ErrUnknownNode)
	for _, name := range f.names {
		st, _ := nodeLockState(t, env.Client, name)
		assert.Equal(t, StateReady, st.State)
	}
}

// A node annotated with an explicit Zincati ID (identity.node_uuid) is found by it.
func TestZincatiIDOverride(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	const override = "5ee7c0de5ee7c0de5ee7c0de5ee7c0de"
	f := newFleet(t, env, "override", 1, simkubelet.NodeOptions{Annotations: map[string]string{AnnotationZincatiID: override}})
	l := startLock(t, env.Client, Options{Wait: time.Second})
	require.Eventually(t, func() bool { _, err := l.resolve(override); return err == nil }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: override, Group: "default"}))
	_, err := l.resolve(f.ids[f.names[0]])
	assert.ErrorIs(t, err, fleetlock.ErrUnknownNode, "the derived ID no longer matches once overridden")
}

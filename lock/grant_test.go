package lock

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Class 1 (issue 14): a grant belongs to one Node object. The holder's Node is deleted
// while its pre-reboot waits for the drain: the wait ends with node_gone (never
// api_unavailable), the drain of the absent node stops; a new Node of the same name
// gets a fresh cordon and drain, and 2xx only once its own pod is gone.
func TestNodeDeletedWhileHeld(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "gone-" + c.id
	machineID := "0f0e0d0c0b0a09080706050403020100"
	_, id := c.addNode(name, machineID)
	l, drainer := c.lock(Options{Wait: 40 * time.Second})
	c.pod("stuck", name)
	c.budget("stuck", "stuck", 0) // evictions refused: the drain cannot end
	c.waitRunning(name, "stuck")
	awaitCachedName(t, l, name)

	answer := make(chan error, 1)
	go func() { answer <- l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}) }()
	old := c.holding(name)
	require.NoError(t, c.env.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}))
	deleted := time.Now()
	var err error
	select {
	case err = <-answer:
	case <-time.After(time.Minute):
		t.Fatal("the held request never answered")
	}
	t.Logf("answered %s after the delete: %v", time.Since(deleted).Round(time.Millisecond), err)
	assert.ErrorIs(t, err, fleetlock.ErrNodeGone)
	assert.NotErrorIs(t, err, fleetlock.ErrUnavailable)
	_, draining := drainer.Progress(name)
	assert.False(t, draining, "no drain of the absent node goes on")

	// The budget goes, so that the pod left bound to the name can leave with the rest.
	require.NoError(t, c.env.Client.PolicyV1().PodDisruptionBudgets(c.ns).Delete(ctx, "stuck", metav1.DeleteOptions{}))
	// A new Node of the same name (same machine) joins and gets a workload pod.
	fresh, _ := c.addNode(name, machineID)
	require.NotEqual(t, old.UID, fresh.UID)
	c.pod("web", name)
	c.waitRunning(name, "web")
	awaitCachedUID(t, l, name, fresh.UID)
	asked := time.Now()
	err = l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	t.Logf("new node answered after %s: %v", time.Since(asked).Round(time.Millisecond), err)
	require.NoError(t, err)
	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, fresh.UID, n.UID)
	assert.True(t, n.Spec.Unschedulable, "the new Node is cordoned")
	assert.Empty(t, c.mustLeave(name), "2xx only once the new Node's pods are gone")
}

// Class 2 input A (issue 14): pods that tolerate the cordon come back onto the node
// while it drains. No 2xx while such a pod is bound to the node: the drain evicts them
// too (their budget respected), and the request answers drain_in_progress meanwhile.
func TestTolerantPodsRescheduledOntoCordonedNode(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "tolerant-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 8 * time.Second})
	c.deployment("everywhere", 1, func(s *corev1.PodSpec) {
		s.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	})
	c.budget("everywhere", "everywhere", 1)
	c.waitRunning(name, "everywhere")
	awaitCachedName(t, l, name)

	err := l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	left := c.mustLeave(name)
	t.Logf("answer: %v; must-leave pods bound right after: %v", err, left)
	if err == nil {
		assert.Empty(t, left, "told to reboot with pods that must leave bound to the node")
	}
	assert.True(t, errors.Is(err, fleetlock.ErrDrainInProgress) || errors.Is(err, fleetlock.ErrDrainBlocked),
		"a node its pods keep coming back to is never drained: want drain_in_progress, got %v", err)
}

// Class 2 input B (issue 14, kured#929): after its 2xx, someone else uncordons the
// holder and a pod is scheduled onto it; Zincati asks again. The answer is
// node_uncordoned naming who did it, the node is not cordoned again over their
// decision, and a Warning Event says so.
func TestUncordonedAfterGrant(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "uncordoned-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 5 * time.Second})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))

	_, err := c.env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
		[]byte(`{"spec":{"unschedulable":false}}`), metav1.PatchOptions{FieldManager: "other-controller"})
	require.NoError(t, err)
	c.deployment("web", 1, nil)
	c.waitRunning(name, "web")

	err = l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	t.Logf("answer: %v", err)
	require.ErrorIs(t, err, fleetlock.ErrNodeUncordoned)
	n, gerr := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, gerr)
	assert.False(t, n.Spec.Unschedulable, "not cordoned again over the operator's decision")
	assert.Equal(t, StateRebooting, lockOf(n).State, "the slot stays held")
	c.env.AwaitNodeEvent(t, name, ReasonNodeUncordoned, "uncordoned")
}

func awaitCachedName(t *testing.T, l *Lock, name string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, ok, _ := l.nodes.GetIndexer().GetByKey(name)
		return ok
	}, time.Minute, 10*time.Millisecond)
}

func awaitCachedUID(t *testing.T, l *Lock, name string, uid types.UID) {
	t.Helper()
	require.Eventually(t, func() bool {
		obj, ok, _ := l.nodes.GetIndexer().GetByKey(name)
		return ok && obj.(*corev1.Node).UID == uid && len(obj.(*corev1.Node).Status.NodeInfo.MachineID) > 0
	}, time.Minute, 10*time.Millisecond)
}

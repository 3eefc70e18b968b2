package lock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// Class 5 (issue 14): after the manual release the docs used to give (kubectl
// annotate rebootmanager/status=Ready --overwrite), the node stays cordoned by us. The
// next grant recognises that cordon as ours, and its release uncordons the node.
func TestLeftoverCordonAfterManualAnnotate(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "leftover-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 10 * time.Second})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	_, err := c.env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/status":"Ready"}}}`), metav1.PatchOptions{FieldManager: "kubectl-annotate"})
	require.NoError(t, err)
	awaitState(t, l, name, StateReady)

	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	require.NoError(t, c.env.Kubelet.Reboot(ctx, name, 0))
	released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	require.NoError(t, err)
	require.True(t, released)
	st, unschedulable := nodeLockState(t, c.env.Client, name)
	assert.Equal(t, StateReady, st.State)
	assert.False(t, unschedulable, "our own leftover cordon is undone by the next release")
}

// Class 5: an operator who wants a held node to stay cordoned after its reboot sets the
// hold annotation; the release leaves it cordoned.
func TestHoldAnnotationKeepsCordonAtRelease(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "keep-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 10 * time.Second})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	_, err := c.env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"rebootmanager/hold":"disk swap"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	require.NoError(t, c.env.Kubelet.Reboot(ctx, name, 0))
	released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	require.NoError(t, err)
	require.True(t, released)
	st, unschedulable := nodeLockState(t, c.env.Client, name)
	assert.Equal(t, StateReady, st.State)
	assert.True(t, unschedulable, "held by an operator: left cordoned")
}

// Class 5: rebootmanager/zincati-id written as Zincati's identity.node_uuid allows
// (dashes, upper case) is found by the ID Zincati sends.
func TestZincatiIDOverrideNormalised(t *testing.T) {
	c := newCluster(t)
	name := "uuid-" + c.id
	_, err := c.env.Kubelet.AddNode(t.Context(), name, simkubelet.NodeOptions{
		Annotations: map[string]string{AnnotationZincatiID: " 5EE7C0DE-5EE7-C0DE-5EE7-C0DE5EE7C0DE "}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.env.Client.CoreV1().Nodes().Delete(t.Context(), name, metav1.DeleteOptions{}) })
	l, _ := c.lock(Options{Wait: time.Second})
	awaitCachedName(t, l, name)
	n, err := l.resolve("5ee7c0de5ee7c0de5ee7c0de5ee7c0de")
	require.NoError(t, err)
	assert.Equal(t, name, n.Name)
}

// Class 5 (Talos, k3os reports): a machine comes back under a new Node name (same
// machine ID) while its old Node stays NotReady and holding. Its steady-state frees
// the old Node's slot and answers 2xx, instead of ambiguous_node forever.
func TestMachineReRegisteredUnderNewName(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	machineID := simkubelet.RandomID()
	old, fresh := "oldname-"+c.id, "newname-"+c.id
	_, id := c.addNode(old, machineID)
	l, _ := c.lock(Options{Wait: 10 * time.Second})
	awaitCachedName(t, l, old)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	require.NoError(t, c.env.Kubelet.Fail(ctx, old))
	c.env.Kubelet.StopLease(old)
	c.addNode(fresh, machineID)
	awaitCachedName(t, l, fresh)

	released, err := l.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	require.NoError(t, err)
	assert.True(t, released)
	st, _ := nodeLockState(t, c.env.Client, old)
	assert.Equal(t, StateReady, st.State, "the old Node's slot is free")
}

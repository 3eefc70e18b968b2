package evict_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/reboot-manager/reboot-manager/evict"
)

// setReady sets the Node's Ready condition as its poster would: False with reason
// KubeletNotReady is what a live kubelet posts (its runtime or network is not ready,
// PLEG is unhealthy); Unknown with NodeStatusUnknown is what the node lifecycle
// controller writes once the kubelet has stopped posting.
func (c *cluster) setReady(node string, status corev1.ConditionStatus, reason string) {
	c.t.Helper()
	n, err := c.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	require.NoError(c.t, err)
	now := metav1.Now()
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			n.Status.Conditions[i] = corev1.NodeCondition{Type: corev1.NodeReady, Status: status, Reason: reason,
				LastHeartbeatTime: now, LastTransitionTime: now}
		}
	}
	_, err = c.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{})
	require.NoError(c.t, err)
}

// A pod terminating on a node whose kubelet is alive but reports NotReady (Ready
// False, posted by the kubelet itself) is not counted gone, however long past its
// deletion timestamp: that kubelet is still stopping it. Only a silent kubelet
// (Ready Unknown: the node lifecycle controller's verdict) lets a drain stop
// waiting. The clock is an hour ahead, so only the Node's condition decides; before,
// Ready False was read as "kubelet silent" and the running pod was left off
// Remaining (and counted gone by the drain), and the node was rebooted under it.
func TestTerminatingPodOfALiveNotReadyKubeletIsWaitedFor(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("sick", true)
	// A bare pod: a controller's replacement could be scheduled before the
	// scheduler sees the cordon, and be listed for its own sake.
	c.bareOn(node, "app", nil)
	pod := c.waitRunning(node, "app", 1)[0]
	const finalizer = "evict.test/slow-kubelet"
	_, err := c.client.CoreV1().Pods(c.ns).Patch(t.Context(), pod.Name, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":["`+finalizer+`"]}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = c.client.CoreV1().Pods(c.ns).Patch(context.WithoutCancel(t.Context()), pod.Name, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	c.cordon(node, true)
	require.NoError(t, c.client.CoreV1().Pods(c.ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}))
	c.setReady(node, corev1.ConditionFalse, "KubeletNotReady")

	d := evict.New(c.client, evict.Options{
		SkipWaitForDeleteTimeout: time.Second,
		Clock:                    clocktesting.NewFakeClock(time.Now().Add(time.Hour)),
	})
	remaining := func() []types.NamespacedName {
		n, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
		require.NoError(t, err)
		left, err := d.Remaining(t.Context(), n)
		require.NoError(t, err)
		return left
	}
	assert.Equal(t, []types.NamespacedName{{Namespace: c.ns, Name: pod.Name}}, remaining(),
		"Ready False comes from a live kubelet: its terminating pod must still leave")

	c.setReady(node, corev1.ConditionUnknown, "NodeStatusUnknown")
	assert.Empty(t, remaining(), "Ready Unknown: the kubelet is silent, the pod counts gone")
}

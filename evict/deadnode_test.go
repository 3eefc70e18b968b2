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
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
)

// Issue 15 item 2's failing input (cluster-api#1870): the node is NotReady, its
// kubelet gone, so an evicted pod keeps its deletionTimestamp for ever. Once it has
// been terminating past its grace period plus SkipWaitForDeleteTimeout it counts as
// gone, with a log line and an Event; nothing is deleted. Before, the drain said
// "draining, 1 pods left" for ever, whatever the failure policy.
func TestDrainOfADeadKubeletsNode(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("dead", true)
	grace := int64(1)
	c.deployment("app", 1, func(s *corev1.PodSpec) { s.TerminationGracePeriodSeconds = &grace })
	pod := c.waitRunning(node, "app", 1)[0]
	// The simulated kubelet of a failed node still finishes deletions; a finalizer
	// keeps the pod object, as a real dead kubelet would.
	const finalizer = "evict.test/dead-kubelet"
	_, err := c.client.CoreV1().Pods(c.ns).Patch(t.Context(), pod.Name, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":["`+finalizer+`"]}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = c.client.CoreV1().Pods(c.ns).Patch(context.WithoutCancel(t.Context()), pod.Name, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	c.cordon(node, true)
	require.NoError(t, c.env.Kubelet.Fail(t.Context(), node))
	// The simulated kubelet posts Ready False as it fails; once a real kubelet's
	// heartbeats stop, the node lifecycle controller marks the node Ready Unknown.
	c.setReady(node, corev1.ConditionUnknown, "NodeStatusUnknown")

	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{
		FailurePolicy: evict.Force, Timeout: 3 * time.Second, SkipWaitForDeleteTimeout: 2 * time.Second,
		BackoffBase: 100 * time.Millisecond,
	})
	p := awaitDone(t, d, node, c.start(d, node), time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	left, err := c.client.CoreV1().Pods(c.ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	require.NoError(t, err, "the pod object stays: nobody finishes its deletion")
	require.NotNil(t, left.DeletionTimestamp)
	assert.GreaterOrEqual(t, time.Since(left.DeletionTimestamp.Time), 2*time.Second, "counted gone only past its grace period plus the timeout")
	assert.Zero(t, counter.Count("delete pods"), "nothing deleted: the eviction was accepted")
	n, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	rest, err := d.Remaining(t.Context(), n)
	require.NoError(t, err)
	assert.Empty(t, rest, "what the drain counts gone, Remaining does too")
	assert.True(t, d.Start(n).Drained, "not reopened")
	evs := c.waitEvents(node, evict.ReasonDrainSkippedTerminatingPod)
	for _, e := range evs {
		if e.Reason == evict.ReasonDrainSkippedTerminatingPod {
			assert.Contains(t, e.Note, pod.Name)
			assert.Equal(t, corev1.EventTypeWarning, e.Type)
		}
	}
}

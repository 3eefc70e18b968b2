package evict

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// The dead-kubelet skip is measured on this process's own clock too, not only
// against the deletion timestamp the API server wrote: with this clock an hour
// ahead of the API server's, a pod just evicted from a node whose kubelet is silent
// looked an hour past its deletion timestamp and was counted gone at once, without
// its grace period or SkipWaitForDeleteTimeout. Now it is waited for its grace
// period plus the timeout from when the drain saw it terminating.
func TestSkipWaitIsMeasuredOnTheDrainsClock(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	name := "evict-skew-" + simkubelet.RandomID()[:8]
	node, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{Unschedulable: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	grace := int64(30)
	pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Finalizers: []string{"evict.test/keep"}},
		Spec: corev1.PodSpec{NodeName: name, TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = env.Client.CoreV1().Pods(ns).Patch(context.WithoutCancel(t.Context()), pod.Name, "application/merge-patch+json",
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	silent := node.DeepCopy() // the node lifecycle controller's verdict
	silent.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionUnknown}}

	clk := clocktesting.NewFakeClock(time.Now().Add(time.Hour)) // this process's clock runs ahead
	d := New(env.Client, Options{SkipWaitForDeleteTimeout: time.Minute, Clock: clk})
	dr := newDrain(d, node, nil)
	t.Cleanup(dr.cancel)
	dr.nodeSeen.Store(silent)
	dr.pods = cache.NewStore(cache.MetaNamespaceKeyFunc)
	require.NoError(t, dr.pods.Add(pod))
	dr.selectTargets()
	require.Len(t, dr.targets, 1)

	require.NoError(t, d.evict(ctx, ns, pod.Name, pod.UID))
	dr.handle(result{t: dr.targets[0], op: opEvict, outcome: accepted})
	evicted, err := env.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	require.NoError(t, err)
	require.NotNil(t, evicted.DeletionTimestamp)
	require.NoError(t, dr.pods.Update(evicted)) // the watch delivers the terminating pod

	dr.refresh()
	require.Equal(t, 1, dr.left(), "just evicted: within its grace period on this clock")
	// The API server may shorten the grace period (a pod that never started); the
	// wait is the one it recorded.
	require.NotNil(t, evicted.DeletionGracePeriodSeconds)
	clk.Step(time.Duration(*evicted.DeletionGracePeriodSeconds)*time.Second + time.Minute - time.Second)
	dr.refresh()
	require.Equal(t, 1, dr.left(), "a second short of its grace period plus the timeout")
	clk.Step(time.Second)
	dr.refresh()
	require.Zero(t, dr.left(), "past its grace period plus the timeout: counted gone")
	require.True(t, dr.targets[0].skipped)
}

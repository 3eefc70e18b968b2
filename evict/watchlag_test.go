package evict

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// A pod that the final LIST finds but the drain's watch has not delivered yet (the
// watch lags the LIST by a few milliseconds under load) must still be evicted and
// waited for. Before, refresh read its absence from the watch's store as "gone",
// and the next final check, finding it in the LIST, only said "the watch is behind":
// the target stayed gone for ever, nothing evicted it, and the drain hung with
// "0 pods left" and no Block, whatever the failure policy.
func TestNewcomerNotYetWatchedIsEvicted(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	name := "evict-lag-" + simkubelet.RandomID()[:8]
	node, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{Unschedulable: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "newcomer"},
		Spec:       corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	d := New(env.Client, Options{})
	dr := newDrain(d, node, nil)
	t.Cleanup(dr.cancel)
	dr.pods = cache.NewStore(cache.MetaNamespaceKeyFunc) // the watch has not delivered the pod yet

	require.False(t, dr.finalCheck(), "the LIST finds the newcomer")
	require.Len(t, dr.targets, 1)
	for round := 1; round <= 3; round++ {
		dr.refresh() // the watch still lags
		dr.finalCheck()
		require.Equal(t, 1, dr.left(), "round %d: the pod is on the node (the LIST says so), not gone", round)
		require.True(t, dr.due(dr.targets[0]), "round %d: the pod is to be evicted, phase %s", round, dr.targets[0].phase)
	}
	require.NoError(t, dr.pods.Add(pod)) // the watch catches up
	dr.refresh()
	require.False(t, dr.finalCheck())
	require.Equal(t, 1, dr.left())
	require.True(t, dr.due(dr.targets[0]), "phase %s", dr.targets[0].phase)
}

package evict

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// A drain that ends while more attempts are in flight than its results channel
// holds still stops: the watch may see an evicted pod go before the eviction's own
// reply is read, which frees a slot of Parallelism for the next attempt while the
// first one's result still waits in the channel. Before, the extra worker blocked
// for ever on its send, so the drain's run never exited: Forget, the Drainer's Run
// (on shutdown) and a resumed drain (waiting for its predecessor) hung for ever.
func TestDrainEndsWithMoreResultsThanItsChannelHolds(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	name := "evict-workers-" + simkubelet.RandomID()[:8]
	node, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{Unschedulable: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, p := range []string{"a", "b"} {
		pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p},
			Spec:       corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		require.NoError(t, store.Add(pod))
	}

	d := New(env.Client, Options{Parallelism: 1})
	dr := newDrain(d, node, nil)
	dr.pods = store
	dr.selectTargets()
	require.Len(t, dr.targets, 2)

	now := time.Now()
	dr.launch(now) // a's eviction
	require.NoError(t, wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true,
		func(context.Context) (bool, error) { return len(dr.results) == 1, nil }), "a's eviction answered")
	require.NoError(t, store.Delete(dr.targets[0].pod)) // the watch sees a go first
	dr.refresh()
	dr.launch(now) // b's eviction: its result finds the channel full
	require.Equal(t, podEvicting, dr.targets[1].phase)

	dr.cancel() // the drain ends (drained, node gone, or forgotten)
	stopped := make(chan struct{})
	go func() { dr.workers.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("a worker of the ended drain is still blocked on its result")
	}
}

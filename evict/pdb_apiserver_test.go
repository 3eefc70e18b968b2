package evict

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// The replies of the real API server to refused evictions are read as the drain
// expects: a 429 names the budget, two budgets give a 500 that the fallback explains,
// and the UID precondition turns an eviction of a same-named pod into a 409.
func TestRealRefusalsNameTheBudget(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	node := "evict-refusal-" + simkubelet.RandomID()[:8]
	_, err := env.Kubelet.AddNode(ctx, node, simkubelet.NodeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), node, metav1.DeleteOptions{})
	})

	newPod := func(name string, labels map[string]string) *corev1.Pod {
		pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		return pod
	}
	newBudget := func(name string) {
		one := intstr.FromInt32(1)
		_, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: policyv1.PodDisruptionBudgetSpec{
				MinAvailable: &one,
				Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			pdb, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.CurrentHealthy == 1, nil
		})
		require.NoError(t, err, "budget %s status", name)
	}
	d := New(env.Client, Options{})

	guarded := newPod("guarded", map[string]string{"app": "guarded"})
	newBudget("guard.v1")
	err = d.evict(ctx, ns, guarded.Name, guarded.UID)
	require.Error(t, err)
	require.True(t, apierrors.IsTooManyRequests(err), "got %v", err)
	assert.Equal(t, "guard.v1", pdbFromRefusal(err), "the budget named by the real 429: %#v", err)

	newBudget("guard-2")
	err = d.evict(ctx, ns, guarded.Name, guarded.UID)
	require.Error(t, err)
	assert.True(t, tooManyPDBs(err), "got %v", err)
	assert.Empty(t, pdbFromRefusal(err))
	list, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{"guard-2", "guard.v1"}, pdbsSelecting(guarded, list.Items))

	free := newPod("free", map[string]string{"app": "free"})
	err = d.evict(ctx, ns, free.Name, "another-uid")
	assert.True(t, apierrors.IsConflict(err), "a pod of that name with another UID: got %v", err)
	got, err := env.Client.CoreV1().Pods(ns).Get(ctx, free.Name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Nil(t, got.DeletionTimestamp, "not evicted")
	require.NoError(t, d.evict(ctx, ns, free.Name, free.UID))
	err = d.evict(ctx, ns, "absent", "x")
	assert.True(t, apierrors.IsNotFound(err), "got %v", err)
}

package controlplane_test

import (
	"context"
	"os"
	"sync"
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
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// Two writers update the same Node from the same resourceVersion: the API server
// accepts exactly one and answers 409 Conflict to the other.
func TestConcurrentUpdatesConflict(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	node, err := env.Kubelet.AddNode(ctx, "smoke-conflict", simkubelet.NodeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), node.Name, metav1.DeleteOptions{})
	})

	var wg sync.WaitGroup
	errs := make([]error, 2)
	start := make(chan struct{})
	for i := range errs {
		wg.Go(func() {
			n := node.DeepCopy()
			n.Annotations = map[string]string{"writer": string(rune('a' + i))}
			<-start
			_, errs[i] = env.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		})
	}
	close(start)
	wg.Wait()
	conflicts, oks := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			oks++
		case apierrors.IsConflict(err):
			conflicts++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	assert.Equal(t, 1, oks, "exactly one update wins")
	assert.Equal(t, 1, conflicts, "the other gets 409 Conflict")
}

// An eviction that a PodDisruptionBudget forbids gets 429; once the budget allows it,
// the eviction is accepted and the pod is gone.
func TestEvictionRespectsPDB(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	node, err := env.Kubelet.AddNode(ctx, "smoke-evict", simkubelet.NodeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), node.Name, metav1.DeleteOptions{})
	})

	labels := map[string]string{"app": "guarded"}
	pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "guarded", Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node.Name,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	minAvailable := intstr.FromInt32(1)
	_, err = env.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guard"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &minAvailable,
			Selector:     &metav1.LabelSelector{MatchLabels: labels},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	// The disruption controller computes the budget's status once the pod is Ready.
	waitFor(t, "PDB status observed with 1 healthy pod", func(ctx context.Context) (bool, error) {
		pdb, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "guard", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.CurrentHealthy == 1, nil
	})

	eviction := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns}}
	err = env.Client.PolicyV1().Evictions(ns).Evict(ctx, eviction)
	require.Error(t, err)
	assert.True(t, apierrors.IsTooManyRequests(err), "want 429, got %v", err)
	_, err = env.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	require.NoError(t, err, "a refused eviction leaves the pod in place")

	_, err = env.Client.PolicyV1().PodDisruptionBudgets(ns).Patch(ctx, "guard", "application/merge-patch+json",
		[]byte(`{"spec":{"minAvailable":0}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	waitFor(t, "eviction accepted once the PDB allows it", func(ctx context.Context) (bool, error) {
		err := env.Client.PolicyV1().Evictions(ns).Evict(ctx, eviction)
		return err == nil, ignore429(err)
	})
	waitFor(t, "evicted pod gone", func(ctx context.Context) (bool, error) {
		_, err := env.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// RBAC is enforced: a ServiceAccount without permissions cannot list nodes.
func TestRBACEnforced(t *testing.T) {
	env := controlplane.Shared(t)
	ns := env.Namespace(t)
	client, kubeconfig := env.ServiceAccountClient(t, ns, "default")
	_, err := client.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "want 403, got %v", err)
	assert.FileExists(t, kubeconfig)
}

// The audit log records requests, so tests can prove what a component never did.
func TestAuditLogRecordsRequests(t *testing.T) {
	env := controlplane.Shared(t)
	_, err := env.Client.CoreV1().Namespaces().Get(t.Context(), "default", metav1.GetOptions{})
	require.NoError(t, err)
	waitFor(t, "audit log written", func(context.Context) (bool, error) {
		st, err := os.Stat(env.AuditLog)
		return err == nil && st.Size() > 0, nil
	})
}

// The request counter names requests by verb and resource.
func TestCountingConfig(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	cfg, counter := env.CountingConfig()
	client := kubernetes.NewForConfigOrDie(cfg)
	_, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	_, err = client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	require.NoError(t, err)
	err = client.PolicyV1().Evictions("default").Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "absent", Namespace: "default"}})
	require.True(t, apierrors.IsNotFound(err), "got %v", err)
	assert.Equal(t, map[string]int{"list nodes": 1, "get namespaces": 1, "create pods/eviction": 1}, counter.Snapshot())
	assert.Equal(t, 3, counter.Total())
}

func waitFor(t *testing.T, what string, cond wait.ConditionWithContextFunc) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func ignore429(err error) error {
	if apierrors.IsTooManyRequests(err) {
		return nil
	}
	return err
}

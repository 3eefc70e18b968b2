package evict_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
)

// tolerateAll is what a pod that tolerates the cordon carries.
func tolerateAll(s *corev1.PodSpec) {
	s.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
}

// onlyOn pins a pod template to one node by its hostname label.
func onlyOn(node string) func(*corev1.PodSpec) {
	return func(s *corev1.PodSpec) {
		tolerateAll(s)
		s.NodeSelector["kubernetes.io/hostname"] = node
	}
}

// bareOn creates a pod bound to node, outside any controller.
func (c *cluster) bareOn(node, name string, mutate func(*corev1.PodSpec)) *corev1.Pod {
	c.t.Helper()
	spec := c.podSpec()
	spec.NodeName = node
	if mutate != nil {
		mutate(&spec)
	}
	pod, err := c.client.CoreV1().Pods(c.ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec:       spec,
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
	return pod
}

// Issue 14's failing input A: a Deployment whose pods tolerate everything, under a
// budget of maxUnavailable 1, can only go back to the cordoned node. The drain never
// reports Drained while one of its pods is there: it evicts the newcomers for
// ReturningRounds rounds, then stops evicting them (no churn) and reports the block
// with the pod. Before, the drain knew only the pods of its first LIST and reported
// Drained as soon as the first one was gone, with its replacement Running there.
func TestDrainNeverDrainedWhileToleratingPodsReturn(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("tol", true)
	c.deployment("web", 1, onlyOn(node))
	one := intstr.FromInt32(1)
	c.pdb("web", "web", nil, &one)
	c.waitRunning(node, "web", 1)
	c.waitPDB("web", 1, 1)
	c.cordon(node, true)

	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond})
	p := c.start(d, node)
	var blocked evict.Block
	c.waitFor(2*time.Minute, "the drain blocked by returning pods", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		require.False(t, p.Drained, "drained while pods of web return to the node: %s", p)
		b, ok := p.Blocked()
		blocked = b
		return ok && b.Reason == evict.BlockedByPodsReturning, nil
	})
	assert.Contains(t, blocked.Pod, c.ns+"/web-")
	assert.Contains(t, p.String(), "PodsReturning")
	evictions := counter.Count("create pods/eviction")
	assert.GreaterOrEqual(t, evictions, evict.DefaultReturningRounds+1, "the first pod and a newcomer per round")

	// Blocked: no more evictions before ReturnRetry, the pod stays, the drain is not done.
	time.Sleep(3 * time.Second)
	p, _ = d.Progress(node)
	assert.False(t, p.Drained)
	select {
	case <-p.Done:
		t.Fatalf("drain ended: %s", p)
	default:
	}
	assert.Equal(t, evictions, counter.Count("create pods/eviction"), "returning pods are not evicted again before ReturnRetry (30 s)")
	pods := c.waitRunning(node, "web", 1)
	assert.Equal(t, blocked.Pod, c.ns+"/"+pods[0].Name, "the block names the pod on the node")
	c.waitEvents(node, evict.ReasonDrainBlocked)
	metrics := gather(t, d)
	assert.Positive(t, metrics[`rebootmanager_drain_blocked_since_timestamp_seconds{node="`+node+`",reason="PodsReturning"}`])

	// Once the workload goes elsewhere, the drain ends.
	require.NoError(t, c.client.AppsV1().Deployments(c.ns).Delete(t.Context(), "web", metav1.DeleteOptions{}))
	p = awaitDone(t, d, node, p, time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	assert.Empty(t, c.nodePods(node))
}

// A drain blocked by returning pods ends once the workload stops coming back: the
// returned pod is evicted once more every ReturnRetry. Before, the drain stayed
// blocked for as long as that pod ran, although nothing would have brought it back
// (seen after an API-server outage, whose scheduler missed the cordon).
func TestDrainEvictsReturnedPodsAgainAfterReturnRetry(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("retry", true)
	c.deployment("web", 1, onlyOn(node))
	c.waitRunning(node, "web", 1)
	c.cordon(node, true)

	d := c.drainer(c.client, evict.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		ReturnRetry: 2 * time.Second})
	p := c.start(d, node)
	c.waitFor(2*time.Minute, "the drain blocked by returning pods", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		b, ok := p.Blocked()
		return ok && b.Reason == evict.BlockedByPodsReturning, nil
	})

	// The workload stops coming back: its pods are orphaned, nothing recreates them.
	orphan := metav1.DeletePropagationOrphan
	ctx := t.Context()
	require.NoError(t, c.client.AppsV1().Deployments(c.ns).Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: &orphan}))
	rss, err := c.client.AppsV1().ReplicaSets(c.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	require.NoError(t, err)
	for _, rs := range rss.Items {
		require.NoError(t, c.client.AppsV1().ReplicaSets(c.ns).Delete(ctx, rs.Name, metav1.DeleteOptions{PropagationPolicy: &orphan}))
	}
	p = awaitDone(t, d, node, p, 2*time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	assert.Empty(t, c.nodePods(node))
}

// A pod that arrives on the cordoned node while the drain waits for a budget is
// evicted too before the drain reports Drained. Before, it was left running.
func TestDrainEvictsPodsThatArriveDuringIt(t *testing.T) {
	c := newCluster(t)
	node, _, budget := blockedWorkload(c, 1)
	d := c.drainer(c.client, evict.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond})
	p := c.start(d, node)
	c.waitFor(30*time.Second, "the drain blocked by "+budget, func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		return slices.Contains(p.BlockedBy, budget), nil
	})
	late := c.bareOn(node, "late", tolerateAll)
	c.waitRunning(node, "late", 1)
	_, err := c.client.PolicyV1().PodDisruptionBudgets(c.ns).Patch(t.Context(), "db", types.MergePatchType,
		[]byte(`{"spec":{"minAvailable":0}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	p = awaitDone(t, d, node, p, time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	assert.NotContains(t, uids(c.nodePods(node)), late.UID, "the late pod was evicted before Drained")
	assert.Equal(t, 2, p.Pods, "the first pod and the late one")
}

// Remaining lists from the API server what must still leave; a drain that had ended
// Drained goes back to evicting it, with a new Done, and ends Drained again.
func TestRemainingReopensADrainedDrain(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("rem", true)
	c.cordon(node, true)
	d := c.drainer(c.client, evict.Options{BackoffBase: 100 * time.Millisecond})
	p := awaitDone(t, d, node, c.start(d, node), 30*time.Second)
	require.True(t, p.Drained, "an empty node: %s", p)
	n, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	left, err := d.Remaining(t.Context(), n)
	require.NoError(t, err)
	assert.Empty(t, left)

	late := c.bareOn(node, "late", tolerateAll)
	left, err = d.Remaining(t.Context(), n)
	require.NoError(t, err)
	assert.Equal(t, []types.NamespacedName{{Namespace: c.ns, Name: "late"}}, left)
	again := d.Start(n)
	assert.False(t, again.Drained, "back to evicting: %s", again)
	assert.Equal(t, p.Started, again.Started, "the same drain, resumed")
	again = awaitDone(t, d, node, again, 30*time.Second)
	require.True(t, again.Drained, "progress: %s", again)
	assert.NotContains(t, uids(c.nodePods(node)), late.UID)
	left, err = d.Remaining(t.Context(), n)
	require.NoError(t, err)
	assert.Empty(t, left)
}

// Issue 14 class 1: a drain belongs to one Node object. When it is deleted, the drain
// stops (NodeGone) and evicts nothing more; a new Node of the same name gets a fresh
// drain. Before, the drain kept evicting the pods still bound to the name.
func TestDrainStopsWhenItsNodeIsDeleted(t *testing.T) {
	c := newCluster(t)
	node, pods, budget := blockedWorkload(c, 1)
	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 300 * time.Millisecond})
	old, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	p := d.Start(old)
	assert.Equal(t, old.UID, p.NodeUID)
	c.waitFor(30*time.Second, "the drain blocked by "+budget, func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		return slices.Contains(p.BlockedBy, budget), nil
	})

	require.NoError(t, c.client.CoreV1().Nodes().Delete(t.Context(), node, metav1.DeleteOptions{}))
	p = awaitDone(t, d, node, p, 30*time.Second)
	assert.Equal(t, evict.PhaseNodeGone, p.Phase, "progress: %s", p)
	assert.Equal(t, old.UID, p.NodeUID)
	assert.False(t, p.Drained)
	assert.False(t, p.Failed)
	stopped := counter.Count("create pods/eviction")
	// Let the budget allow the eviction: a drain still running would evict now.
	_, err = c.client.PolicyV1().PodDisruptionBudgets(c.ns).Patch(t.Context(), "db", types.MergePatchType,
		[]byte(`{"spec":{"minAvailable":0}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	time.Sleep(2 * time.Second)
	assert.Equal(t, stopped, counter.Count("create pods/eviction"), "no eviction once the node is gone")
	still := uids(c.nodePods(node))
	assert.Contains(t, still, pods[0].UID, "the pod bound to the deleted node is left alone")
	again := d.Start(old)
	assert.Equal(t, evict.PhaseNodeGone, again.Phase, "a drain of the deleted Node stays so until Forget")

	// The same name comes back as another Node: a fresh drain.
	fresh := c.addNode("x", true)
	require.Equal(t, node, fresh)
	c.cordon(node, true)
	n, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	require.NotEqual(t, old.UID, n.UID)
	p = d.Start(n)
	assert.Equal(t, n.UID, p.NodeUID)
	assert.True(t, p.Started.After(again.Started), "a new drain")
	p = awaitDone(t, d, node, p, time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	assert.NotContains(t, uids(c.nodePods(node)), pods[0].UID)
}

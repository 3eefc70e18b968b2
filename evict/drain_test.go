package evict_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/reboot-manager/reboot-manager/evict"
)

// A node with pods of every kind: the drain evicts exactly those that must leave
// (Deployment pods under a budget, an emptyDir pod, a bare pod), one budget-allowed
// disruption at a time, leaves the DaemonSet pod, the mirror pod and the completed
// Job pod, reports "drained" only once the evicted pods are gone, and deletes nothing.
func TestDrainEvictsExactlyThePodsThatMustLeave(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	a := c.addNode("a", true)
	b := c.addNode("b", false)
	cn := c.addNode("c", false)

	// While only a is schedulable, put everything there.
	dsLabels := map[string]string{"app": "agent"}
	_, err := c.client.AppsV1().DaemonSets(c.ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: dsLabels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: dsLabels}, Spec: c.podSpec()},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	c.deployment("web", 3, nil)
	one := intstr.FromInt32(1)
	c.pdb("web", "web", nil, &one)
	c.deployment("cache", 1, func(s *corev1.PodSpec) {
		s.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	})
	jobSpec := c.podSpec()
	jobSpec.RestartPolicy = corev1.RestartPolicyNever
	_, err = c.client.BatchV1().Jobs(c.ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "batch"},
		Spec: batchv1.JobSpec{
			BackoffLimit: new(int32),
			Template:     corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "batch"}}, Spec: jobSpec},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	bare := c.podSpec()
	bare.NodeName = a
	_, err = c.client.CoreV1().Pods(c.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "bare", Labels: map[string]string{"app": "bare"}},
		Spec:       bare,
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	mirror := c.podSpec()
	mirror.NodeName = a
	_, err = c.client.CoreV1().Pods(c.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "static-" + a,
			Labels:      map[string]string{"app": "static"},
			Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "0123456789abcdef"},
		},
		Spec: mirror,
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	c.waitRunning(a, "web", 3)
	c.waitRunning(a, "cache", 1)
	c.waitRunning(a, "agent", 1)
	c.waitRunning(a, "bare", 1)
	c.waitRunning(a, "static", 1)
	jobPod := c.waitRunning(a, "batch", 1)[0]
	c.setPodStatus(jobPod.Name, func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodSucceeded
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady || p.Status.Conditions[i].Type == corev1.ContainersReady {
				p.Status.Conditions[i].Status = corev1.ConditionFalse
			}
		}
		for i := range p.Status.ContainerStatuses {
			p.Status.ContainerStatuses[i].Ready = false
			p.Status.ContainerStatuses[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: metav1.Now(), FinishedAt: metav1.Now(),
			}}
		}
	})
	c.waitPDB("web", 3, 1)

	mustGo, mustStay := map[types.UID]string{}, map[types.UID]string{}
	for _, p := range c.nodePods(a) {
		switch p.Labels["app"] {
		case "web", "cache", "bare":
			mustGo[p.UID] = p.Name
		case "agent", "static", "batch":
			mustStay[p.UID] = p.Name
		}
	}
	require.Len(t, mustGo, 5)
	require.Len(t, mustStay, 3)

	// The other nodes stay cordoned until the budget has refused an eviction: with
	// room for replacements, the API server's own retry (it waits ~500 ms on a
	// conflict) can outlast a replacement becoming ready, and the budget never refuses.
	c.cordon(b, true)
	c.cordon(cn, true)
	c.cordon(a, true)
	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{BackoffBase: 200 * time.Millisecond, BackoffMax: 2 * time.Second})
	sampler := c.sampleReady("web")

	p := c.start(d, a)
	require.NotNil(t, p.Done)
	assert.False(t, p.Drained)
	again := c.start(d, a)
	assert.Equal(t, p.Started, again.Started, "Start is idempotent")
	assert.Equal(t, p.Done, again.Done, "Start is idempotent")

	c.waitFor(time.Minute, "the drain blocked by budget web", func(context.Context) (bool, error) {
		now, _ := d.Progress(a)
		return slices.Contains(now.BlockedBy, c.ns+"/web"), nil
	})
	c.cordon(b, false)
	c.cordon(cn, false)

	p = awaitDone(t, d, a, p, 2*time.Minute)
	after := c.nodePods(a) // a fresh LIST, as soon as the drain says done
	least, samples := sampler.finish()

	require.True(t, p.Drained, "progress: %s", p)
	assert.False(t, p.Failed)
	for _, pod := range after {
		if name, ok := mustGo[pod.UID]; ok {
			t.Errorf("pod %s (phase %s, deleting %v) still on the node when the drain reported drained", name, pod.Status.Phase, pod.DeletionTimestamp != nil)
		}
	}
	left := uids(after)
	for uid, name := range mustStay {
		assert.Contains(t, left, uid, "pod %s must stay on the node", name)
	}
	assert.Equal(t, 5, p.Pods)
	assert.Equal(t, 1, p.Unmanaged, "the bare pod")
	assert.Equal(t, 1, p.LocalData, "the emptyDir pod")
	assert.Zero(t, p.PodsLeft)
	assert.Empty(t, p.Left)
	assert.Empty(t, p.BlockedBy)
	assert.Zero(t, p.Forced)
	assert.NoError(t, p.Err)

	assert.GreaterOrEqual(t, least, 2, "the budget allows one web pod down at a time")
	assert.Greater(t, samples, 10, "the sampler ran throughout")

	assert.Zero(t, counter.Count("delete pods"), "no DELETE in the default mode")
	assert.GreaterOrEqual(t, counter.Count("create pods/eviction"), 5)

	// The audit log shows evictions of exactly the pods that had to go, and that the
	// budget refused some: three web pods under maxUnavailable 1 cannot go at once.
	want := map[string]bool{}
	for _, name := range mustGo {
		want[name] = true
	}
	evicted, refusals := map[string]bool{}, 0
	for _, e := range c.audited() {
		if e.Verb == "create" && e.ObjectRef.Subresource == "eviction" {
			if e.ResponseStatus != nil && e.ResponseStatus.Code == 429 {
				refusals++
				continue
			}
			evicted[e.ObjectRef.Name] = true
		}
	}
	assert.Equal(t, want, evicted, "pods evicted")
	assert.Positive(t, refusals, "the budget refused evictions")

	evs := c.waitEvents(a, evict.ReasonDrainStarted, evict.ReasonDrainUnmanagedPods, evict.ReasonDrainLocalData,
		evict.ReasonDrainBlocked, evict.ReasonDrainSucceeded)
	assert.Equal(t, 1, countReason(evs, evict.ReasonDrainBlocked), "blocked is posted once per budget")
	for _, e := range evs {
		switch e.Reason {
		case evict.ReasonDrainUnmanagedPods:
			assert.Contains(t, e.Note, c.ns+"/bare")
		case evict.ReasonDrainLocalData:
			assert.Contains(t, e.Note, c.ns+"/cache-")
		case evict.ReasonDrainBlocked:
			assert.Contains(t, e.Note, c.ns+"/web")
		}
	}

	final := c.start(d, a)
	assert.True(t, final.Drained, "a finished drain stays drained until Forget")
	assert.Equal(t, p.Started, final.Started)
}

// blockedWorkload puts a Deployment of n pods on a fresh node under a budget that
// allows no disruption, and returns the node (now cordoned), the pods and the
// budget's namespace/name. Another node takes the replacements.
func blockedWorkload(c *cluster, n int32) (string, []corev1.Pod, string) {
	c.t.Helper()
	node := c.addNode("x", true)
	spare := c.addNode("y", false)
	c.deployment("db", n, nil)
	all := intstr.FromInt32(n)
	c.pdb("db", "db", &all, nil)
	pods := c.waitRunning(node, "db", int(n))
	c.waitPDB("db", n, 0)
	c.cordon(spare, false)
	c.cordon(node, true)
	return node, pods, c.ns + "/db"
}

// A budget that allows nothing holds the drain: the progress names the budget, the
// drain does not finish, one Event says so; once the budget is relaxed, the drain
// completes, and nothing was deleted.
func TestDrainWaitsWhileBudgetRefuses(t *testing.T) {
	c := newCluster(t)
	node, pods, budget := blockedWorkload(c, 2)
	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	sampler := c.sampleReady("db")

	p := c.start(d, node)
	c.waitFor(30*time.Second, "the drain blocked by "+budget, func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		return len(p.BlockedBy) == 1 && p.BlockedBy[0] == budget, nil
	})
	time.Sleep(3 * time.Second)
	p, _ = d.Progress(node)
	select {
	case <-p.Done:
		t.Fatalf("drain ended although the budget allows no disruption: %s", p)
	default:
	}
	assert.False(t, p.Drained)
	assert.False(t, p.Failed)
	assert.Equal(t, 2, p.PodsLeft)
	assert.Equal(t, []string{budget}, p.BlockedBy)
	require.Error(t, p.Err)
	assert.True(t, apierrors.IsTooManyRequests(p.Err), "Err is the refusal: %v", p.Err)
	assert.Contains(t, p.String(), "blocked by PodDisruptionBudget "+budget)
	still := uids(c.nodePods(node))
	for _, pod := range pods {
		assert.Contains(t, still, pod.UID, "pod %s stays while the budget refuses", pod.Name)
	}
	assert.Greater(t, counter.Count("create pods/eviction"), 4, "refused evictions are retried")
	assert.False(t, p.BlockedSince.IsZero())
	metrics := gather(t, d)
	assert.Equal(t, 2.0, metrics[`rebootmanager_drain_pods_left{node="`+node+`"}`])
	blockedSince := metrics[`rebootmanager_drain_blocked_since_timestamp_seconds{node="`+node+`",reason="PodDisruptionBudget"}`]
	assert.Less(t, blockedSince, float64(time.Now().Add(-2500*time.Millisecond).UnixNano())/1e9, "blocked for the 3s slept")
	assert.Positive(t, blockedSince)
	assert.Equal(t, 1.0, metrics[`rebootmanager_drains{state="running"}`])
	assert.Greater(t, metrics[`rebootmanager_evictions_total{result="refused"}`], 4.0)
	c.waitEvents(node, evict.ReasonDrainBlocked)
	time.Sleep(500 * time.Millisecond) // let any duplicate be posted
	evs := c.nodeEvents(node)
	assert.Equal(t, 1, countReason(evs, evict.ReasonDrainBlocked), "blocked is posted once, not per retry")
	for _, e := range evs {
		if e.Reason == evict.ReasonDrainBlocked {
			assert.Nil(t, e.Series, "not repeated as a series either")
			assert.Equal(t, corev1.EventTypeWarning, e.Type)
			require.NotNil(t, e.Related)
			assert.Equal(t, "PodDisruptionBudget", e.Related.Kind)
			assert.Equal(t, c.ns+"/db", e.Related.Namespace+"/"+e.Related.Name)
			assert.Contains(t, e.Note, budget)
		}
	}

	_, err := c.client.PolicyV1().PodDisruptionBudgets(c.ns).Patch(t.Context(), "db", types.MergePatchType,
		[]byte(`{"spec":{"minAvailable":1}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	p = awaitDone(t, d, node, p, time.Minute)
	least, _ := sampler.finish()
	require.True(t, p.Drained, "progress: %s", p)
	assert.Empty(t, p.BlockedBy)
	after := uids(c.nodePods(node))
	for _, pod := range pods {
		assert.NotContains(t, after, pod.UID, "pod %s gone", pod.Name)
	}
	assert.GreaterOrEqual(t, least, 1, "minAvailable 1 held while draining")
	assert.Zero(t, counter.Count("delete pods"), "no DELETE in the default mode")
	assert.True(t, p.BlockedSince.IsZero(), "no longer blocked")
	metrics = gather(t, d)
	assert.Equal(t, 1.0, metrics[`rebootmanager_drains{state="drained"}`])
	assert.NotContains(t, metrics, `rebootmanager_drain_blocked_since_timestamp_seconds{node="`+node+`",reason="PodDisruptionBudget"}`)
	assert.Equal(t, 2.0, metrics[`rebootmanager_evictions_total{result="accepted"}`])
	evs = c.waitEvents(node, evict.ReasonDrainSucceeded)
	assert.Equal(t, 1, countReason(evs, evict.ReasonDrainBlocked))
	for _, e := range evs {
		if e.Reason == evict.ReasonDrainBlocked {
			assert.Nil(t, e.Series, "blocked is posted once per drain")
		}
	}
}

// Under Force, once Timeout has passed, the pods the budget still protects are
// deleted, and the drain completes.
func TestForceDeletesAfterTimeout(t *testing.T) {
	c := newCluster(t)
	node, pods, budget := blockedWorkload(c, 2)
	cfg, counter := c.env.CountingConfig()
	const timeout = 8 * time.Second
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{
		FailurePolicy: evict.Force, Timeout: timeout, BackoffBase: 200 * time.Millisecond, BackoffMax: time.Second,
	})
	start := time.Now()
	p := c.start(d, node)
	// Blocked by the budget well before the timeout, and nothing deleted meanwhile (a
	// loaded machine may take seconds for the first refusal: wait for it, not a sleep).
	c.waitFor(timeout-2*time.Second, "the budget's refusal", func(context.Context) (bool, error) {
		blocked, _ := d.Progress(node)
		return slices.Equal(blocked.BlockedBy, []string{budget}), nil
	})
	deletes := counter.Count("delete pods")
	require.Less(t, time.Since(start), timeout)
	assert.Zero(t, deletes, "no DELETE before the timeout")

	p = awaitDone(t, d, node, p, time.Minute)
	assert.GreaterOrEqual(t, time.Since(start), timeout)
	require.True(t, p.Drained, "progress: %s", p)
	assert.Equal(t, 2, p.Forced)
	assert.Equal(t, 2, counter.Count("delete pods"), "one DELETE per blocked pod")
	after := uids(c.nodePods(node))
	for _, pod := range pods {
		assert.NotContains(t, after, pod.UID, "pod %s gone", pod.Name)
	}
	c.waitEvents(node, evict.ReasonDrainSucceeded)
	evs := c.waitEventCount(node, evict.ReasonDrainForced, 2)
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, 2, countReason(c.nodeEvents(node), evict.ReasonDrainForced), "one event per deleted pod")
	forced := map[string]bool{}
	for _, e := range evs {
		if e.Reason == evict.ReasonDrainForced {
			assert.Equal(t, corev1.EventTypeWarning, e.Type)
			require.NotNil(t, e.Related)
			forced[e.Related.Name] = true
		}
	}
	for _, pod := range pods {
		assert.True(t, forced[pod.Name], "an event names deleted pod %s", pod.Name)
	}
}

// Under Release, once Timeout has passed, the drain gives up: Failed, Done closed,
// nothing deleted; it stays failed until Forget, after which Start begins afresh.
// Forget stops a drain: no eviction is sent after it returns.
func TestReleaseGivesUpAndForgetStops(t *testing.T) {
	c := newCluster(t)
	node, pods, budget := blockedWorkload(c, 2)
	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{
		FailurePolicy: evict.Release, Timeout: 2 * time.Second, BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	})
	p := c.start(d, node)
	p = awaitDone(t, d, node, p, 30*time.Second)
	require.True(t, p.Failed, "progress: %s", p)
	assert.False(t, p.Drained)
	assert.ErrorIs(t, p.Err, evict.ErrTimeout)
	assert.Equal(t, []string{budget}, p.BlockedBy)
	assert.Equal(t, 2, p.PodsLeft)
	for _, pod := range c.nodePods(node) {
		if pod.Labels["app"] == "db" {
			assert.Nil(t, pod.DeletionTimestamp, "pod %s untouched", pod.Name)
		}
	}
	assert.Len(t, c.nodePods(node), len(pods))
	assert.Zero(t, counter.Count("delete pods"))
	again := c.start(d, node)
	assert.True(t, again.Failed, "a failed drain stays failed until Forget")
	assert.Equal(t, p.Started, again.Started)
	c.waitEvents(node, evict.ReasonDrainFailed)

	d.Forget(node)
	_, known := d.Progress(node)
	assert.False(t, known)
	assert.Empty(t, d.Drains())

	before := counter.Count("create pods/eviction")
	d.Retry(node) // what an operator's release does; see TestReleasedDrainDoesNotChurn
	fresh := c.start(d, node)
	assert.False(t, fresh.Failed)
	assert.True(t, fresh.Started.After(p.Started), "a new drain")
	assert.Len(t, d.Drains(), 1)
	c.waitFor(10*time.Second, "the new drain evicting", func(context.Context) (bool, error) {
		return counter.Count("create pods/eviction") > before, nil
	})
	d.Forget(node)
	select {
	case <-fresh.Done:
	default:
		t.Error("Forget closes the stopped drain's Done")
	}
	stopped := counter.Count("create pods/eviction")
	time.Sleep(1500 * time.Millisecond)
	assert.Equal(t, stopped, counter.Count("create pods/eviction"), "no eviction after Forget returned")
}

// Options.Self is evicted only once every other pod on the node is gone.
func TestSelfIsEvictedLast(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	node := c.addNode("s", true)
	spare := c.addNode("t", false)
	c.deployment("app", 3, nil)
	self := c.podSpec()
	self.NodeName = node
	_, err := c.client.CoreV1().Pods(c.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager", Labels: map[string]string{"app": "self"}},
		Spec:       self,
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	apps := c.waitRunning(node, "app", 3)
	c.waitRunning(node, "self", 1)
	c.cordon(spare, false)
	c.cordon(node, true)

	// Record, in watch order, when each pod starts terminating and when it is gone.
	list, err := c.client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	w, err := c.client.CoreV1().Pods(c.ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	require.NoError(t, err)
	var mu sync.Mutex
	seq, terminating, deleted := 0, map[string]int{}, map[string]int{}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			seq++
			if _, seen := terminating[pod.Name]; !seen && pod.DeletionTimestamp != nil {
				terminating[pod.Name] = seq
			}
			if ev.Type == watch.Deleted {
				deleted[pod.Name] = seq
			}
			mu.Unlock()
		}
	}()

	d := c.drainer(c.client, evict.Options{Self: c.ns + "/reboot-manager"})
	p := awaitDone(t, d, node, c.start(d, node), time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	c.waitFor(10*time.Second, "the self pod's deletion watched", func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		_, ok := deleted["reboot-manager"]
		return ok, nil
	})
	w.Stop()
	<-watched
	selfAt, ok := terminating["reboot-manager"]
	require.True(t, ok, "self evicted")
	for _, pod := range apps {
		require.Contains(t, deleted, pod.Name)
		assert.Less(t, deleted[pod.Name], selfAt, "pod %s gone before self is evicted", pod.Name)
	}
}

// A drain waits for pod objects to be gone, not for evictions to be accepted; pods
// already terminating when it starts (a drain resumed by a new process) are waited
// for, not evicted again; and a pod replaced under the same name by another UID on
// another node (as a StatefulSet's is, this node being cordoned) counts as gone, its
// replacement left alone. (A pod that arrives on the node itself must leave too: see
// TestDrainEvictsPodsThatArriveDuringIt.)
func TestDrainWaitsForPodObjects(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	node := c.addNode("r", true)
	spare := c.addNode("q", true)
	const finalizer = "evict.test/hold"
	createOn := func(node, name string) *corev1.Pod {
		spec := c.podSpec()
		spec.NodeName = node
		pod, err := c.client.CoreV1().Pods(c.ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}, Finalizers: []string{finalizer}},
			Spec:       spec,
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		c.waitRunning(node, name, 1)
		return pod
	}
	create := func(name string) *corev1.Pod { return createOn(node, name) }
	release := func(name string) {
		_, err := c.client.CoreV1().Pods(c.ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, name := range []string{"held", "db-0"} {
			_, _ = c.client.CoreV1().Pods(c.ns).Patch(context.WithoutCancel(t.Context()), name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		}
	})
	create("held")
	db := create("db-0")
	// An earlier process evicted "held"; its finalizer keeps it terminating.
	require.NoError(t, c.client.CoreV1().Pods(c.ns).Delete(ctx, "held", metav1.DeleteOptions{}))
	c.cordon(node, true)

	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{})
	c.start(d, node)
	c.waitFor(30*time.Second, "db-0 evicted", func(ctx context.Context) (bool, error) {
		pod, err := c.client.CoreV1().Pods(c.ns).Get(ctx, "db-0", metav1.GetOptions{})
		return err == nil && pod.DeletionTimestamp != nil, err
	})
	time.Sleep(time.Second)
	p, _ := d.Progress(node)
	select {
	case <-p.Done:
		t.Fatalf("drained while evicted pods are still there: %s", p)
	default:
	}
	assert.Equal(t, []string{c.ns + "/db-0", c.ns + "/held"}, p.Left)
	assert.Equal(t, 1, counter.Count("create pods/eviction"), "the terminating pod is not evicted again")

	// db-0 goes and comes back under the same name, as a StatefulSet's pod would.
	release("db-0")
	c.waitFor(30*time.Second, "db-0 gone", func(ctx context.Context) (bool, error) {
		_, err := c.client.CoreV1().Pods(c.ns).Get(ctx, "db-0", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
	replacement := createOn(spare, "db-0")
	require.NotEqual(t, db.UID, replacement.UID)
	c.waitFor(10*time.Second, "only held left", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		return len(p.Left) == 1 && p.Left[0] == c.ns+"/held", nil
	})
	select {
	case <-p.Done:
		t.Fatalf("drained while a terminating pod is still there: %s", p)
	default:
	}

	release("held")
	p = awaitDone(t, d, node, p, 30*time.Second)
	require.True(t, p.Drained, "progress: %s", p)
	pod, err := c.client.CoreV1().Pods(c.ns).Get(ctx, "db-0", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, replacement.UID, pod.UID)
	assert.Nil(t, pod.DeletionTimestamp, "the replacement is not evicted")
	assert.Equal(t, 1, counter.Count("create pods/eviction"))
	assert.Zero(t, counter.Count("delete pods"))
}

// Drains started before Run wait for it; after Run returns, Start starts nothing.
func TestStartBeforeRunAndAfterStop(t *testing.T) {
	n1 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"}}
	n2 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2", UID: "uid-n2"}}
	client := fake.NewClientset(n1, n2)
	d := evict.New(client, evict.Options{})
	p := d.Start(n1)
	require.NotNil(t, p.Done)
	time.Sleep(200 * time.Millisecond)
	select {
	case <-p.Done:
		t.Fatal("a drain ran before Run")
	default:
	}
	assert.Len(t, d.Drains(), 1)

	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		d.Run(ctx)
	}()
	p = awaitDone(t, d, "n1", p, 10*time.Second)
	assert.True(t, p.Drained, "a node without pods is drained: %s", p)
	var listed bool
	for _, a := range client.Actions() {
		if a.GetVerb() == "list" && a.GetResource().Resource == "pods" {
			listed = true
		}
		assert.NotEqual(t, "delete", a.GetVerb(), "%v", a)
	}
	assert.True(t, listed, "the node's pods were listed")

	cancel()
	<-ran
	stopped := d.Start(n2)
	assert.ErrorIs(t, stopped.Err, evict.ErrStopped)
	require.NotNil(t, stopped.Done)
	assert.True(t, d.Start(n1).Drained, "what ended before stays")
	d.Forget("n1")
	_, ok := d.Progress("n1")
	assert.False(t, ok)
	assert.True(t, strings.HasPrefix(p.String(), "drained"))
}

// gather collects a Drainer's metrics as "name{labels}" → value.
func gather(t *testing.T, d *evict.Drainer) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(d))
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// Issue 15 item 6: after a drain gave up under Release, the node is not drained
// again until something changes: Start returns the drain that gave up (no new
// cordon-and-evict round for each Zincati retry), GaveUp says why from a fresh
// look, and once the blocking budget allows a disruption the node drains again.
// Before, each Start after Forget began a new drain that evicted afresh.
func TestReleasedDrainDoesNotChurn(t *testing.T) {
	c := newCluster(t)
	node, _, budget := blockedWorkload(c, 2)
	cfg, counter := c.env.CountingConfig()
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{
		FailurePolicy: evict.Release, Timeout: 2 * time.Second, BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	})
	p := awaitDone(t, d, node, c.start(d, node), 30*time.Second)
	require.True(t, p.Failed, "progress: %s", p)
	d.Forget(node) // the lock releases the node

	n, err := c.client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	before := counter.Count("create pods/eviction")
	for range 3 { // Zincati asks again, and again
		again := d.Start(n)
		assert.True(t, again.Failed, "not drained again: %s", again)
		assert.True(t, again.GaveUpBefore)
		assert.Equal(t, p.Started, again.Started, "the drain that gave up")
		assert.Equal(t, []string{budget}, again.BlockedBy, "the refusal says why")
		time.Sleep(500 * time.Millisecond)
	}
	assert.Equal(t, before, counter.Count("create pods/eviction"), "no eviction while nothing changed")
	g, gaveUp, err := d.GaveUp(t.Context(), n)
	require.NoError(t, err)
	assert.True(t, gaveUp)
	assert.True(t, g.GaveUpBefore)
	b, ok := g.Blocked()
	require.True(t, ok)
	assert.Equal(t, evict.BlockedByPDB, b.Reason)
	assert.Equal(t, budget, b.Object)

	// The budget is relaxed: something changed, the node drains again.
	_, err = c.client.PolicyV1().PodDisruptionBudgets(c.ns).Patch(t.Context(), "db", types.MergePatchType,
		[]byte(`{"spec":{"minAvailable":0}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	c.waitFor(30*time.Second, "the change seen", func(ctx context.Context) (bool, error) {
		_, gaveUp, err := d.GaveUp(ctx, n)
		return !gaveUp, err
	})
	fresh := d.Start(n)
	assert.False(t, fresh.GaveUpBefore)
	assert.True(t, fresh.Started.After(p.Started), "a new drain")
	fresh = awaitDone(t, d, node, fresh, time.Minute)
	require.True(t, fresh.Drained, "progress: %s", fresh)
}

// Issue 20 item 5: the Release/Force deadline counts from Options.Since (the grant),
// not from when this replica started the drain: a drain resumed long after the grant
// gives up at once, a second later only what Timeout says.
func TestTimeoutCountsFromSince(t *testing.T) {
	c := newCluster(t)
	node, _, _ := blockedWorkload(c, 1)
	granted := time.Now().Add(-time.Minute)
	d := c.drainer(c.env.Client, evict.Options{
		FailurePolicy: evict.Release, Timeout: 30 * time.Second,
		Since: func(*corev1.Node) time.Time { return granted },
	})
	started := time.Now()
	p := awaitDone(t, d, node, c.start(d, node), 20*time.Second)
	require.True(t, p.Failed, "progress: %s", p)
	assert.ErrorIs(t, p.Err, evict.ErrTimeout)
	t.Logf("gave up %s after this drain began; Timeout 30s from a grant 1m ago", time.Since(started).Round(time.Millisecond))
}

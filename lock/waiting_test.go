package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func getNodeT(t *testing.T, client kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.WithoutCancel(t.Context()), name, metav1.GetOptions{})
	require.NoError(t, err)
	return n
}

// awaitNode waits until the API server shows node name as cond wants it.
func awaitNode(t *testing.T, client kubernetes.Interface, name, what string, cond func(*corev1.Node) bool) *corev1.Node {
	t.Helper()
	var last *corev1.Node
	require.Eventually(t, func() bool {
		last = getNodeT(t, client, name)
		return cond(last)
	}, 30*time.Second, 20*time.Millisecond, "%s: %s", name, what)
	return last
}

func assertNoWaitingMarks(t *testing.T, n *corev1.Node) {
	t.Helper()
	for _, k := range []string{AnnotationWaitingSince, AnnotationLastRequest, AnnotationRequestUntil} {
		assert.NotContains(t, n.Annotations, k, "%s on %s", k, n.Name)
	}
	assert.NotContains(t, n.Labels, LabelWaiting, "label on %s", n.Name)
}

// A node whose pre-reboot waits behind a holder carries the waiting marks: its wait's
// start (kept across its requests), its last request and, while one is open, that
// request's deadline. The promotion removes them all, in its own write.
func TestWaitingMarksWhileWaitingGoneAfterPromotion(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "wait-marks", 2, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Wait: 30 * time.Second})
	awaitCached(t, l, f)
	waiter, holder := f.names[0], f.names[1]
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)
	assertNoWaitingMarks(t, getNodeT(t, env.Client, holder))

	// A first request, held, then dropped (Zincati restarted).
	ctx1, drop := context.WithCancel(ctx)
	ended := make(chan error, 1)
	go func() { ended <- l.PreReboot(ctx1, f.params(waiter, "default")) }()
	n := awaitNode(t, env.Client, waiter, "marked as waiting", func(n *corev1.Node) bool {
		_, waits := WaiterOf(n) // not while its claim is being checked (Claiming)
		return n.Labels[LabelWaiting] == "true" && waits
	})
	w, ok := WaiterOf(n)
	require.True(t, ok, "the waiter reads as one: %v", n.Annotations)
	assert.Equal(t, "default", w.Group)
	assert.True(t, w.Open(time.Now()), "its request is open: until %s", w.RequestUntil)
	assert.WithinDuration(t, time.Now().Add(30*time.Second), w.RequestUntil, 30*time.Second)
	firstSince := w.Since
	drop()
	require.Error(t, <-ended)
	n = awaitNode(t, env.Client, waiter, "request ended", func(n *corev1.Node) bool {
		_, open := n.Annotations[AnnotationRequestUntil]
		return !open
	})
	w, ok = WaiterOf(n)
	require.True(t, ok, "still waiting after its request ended: %v", n.Annotations)
	assert.False(t, w.Open(time.Now()))
	assert.Equal(t, firstSince, w.Since)
	assert.False(t, w.LastRequest.Before(firstSince), "last request stamped at the end")
	assert.Equal(t, "true", n.Labels[LabelWaiting])

	// The next request keeps the wait's start; the holder's release promotes it.
	res := preRebootAsync(l, f, waiter)
	n = awaitNode(t, env.Client, waiter, "request open again", func(n *corev1.Node) bool {
		_, open := n.Annotations[AnnotationRequestUntil]
		return open
	})
	w, _ = WaiterOf(n)
	assert.Equal(t, firstSince, w.Since, "the wait's start is kept")
	released, err := l.SteadyState(ctx, f.params(holder, "default"))
	require.NoError(t, err)
	require.True(t, released)
	select {
	case r := <-res:
		require.NoError(t, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("not granted after the release")
	}
	n = getNodeT(t, env.Client, waiter)
	assert.Equal(t, string(StateRebooting), n.Annotations[AnnotationStatus])
	assertNoWaitingMarks(t, n)
	assertNoWaitingMarks(t, getNodeT(t, env.Client, holder))
}

// A waiter that stopped asking leaves the queue: the stale loop removes its marks
// after Options.WaiterTimeout. A waiter whose request is open keeps them.
func TestStaleWaiterMarksRemoved(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "wait-stale", 3, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Wait: time.Minute, WaiterTimeout: time.Second})
	awaitCached(t, l, f)
	gone, open, holder := f.names[0], f.names[1], f.names[2]
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)

	ctx1, drop := context.WithCancel(ctx)
	ended := make(chan error, 1)
	go func() { ended <- l.PreReboot(ctx1, f.params(gone, "default")) }()
	awaitNode(t, env.Client, gone, "marked as waiting", func(n *corev1.Node) bool { return n.Labels[LabelWaiting] == "true" })
	drop()
	require.Error(t, <-ended)
	_ = preRebootAsync(l, f, open) // held for a minute
	awaitNode(t, env.Client, open, "marked as waiting", func(n *corev1.Node) bool { return n.Labels[LabelWaiting] == "true" })

	n := awaitNode(t, env.Client, gone, "stale marks removed", func(n *corev1.Node) bool { return !hasWaitingMarks(n) })
	assertNoWaitingMarks(t, n)
	assert.Equal(t, StateReady, lockOf(n).State)
	n = getNodeT(t, env.Client, open)
	w, ok := WaiterOf(n)
	require.True(t, ok, "the open waiter keeps its marks: %v", n.Annotations)
	assert.True(t, w.Open(time.Now()))
}

package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Issue 20 item 5: replica 1 drains a holder whose pod a budget protects, then stops
// (a rolling update); replica 2 runs. Once the budget is relaxed, the pod leaves
// without any request from the node's Zincati: replica 2 resumed the drain on its own.
func TestDrainResumedByAnotherReplica(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "resume-" + c.id
	_, id := c.addNode(name, "2f2e2d2c2b2a29282726252423222120")
	c.pod("stuck", name)
	c.budget("stuck", "stuck", 0) // refused: the drain cannot end
	c.waitRunning(name, "stuck")

	// Replica 1: its own drainer and lock, stopped mid-drain.
	ctx1, stop1 := context.WithCancel(ctx)
	d1 := evict.New(c.env.Client, evict.Options{})
	ran := make(chan struct{})
	go func() { defer close(ran); d1.Run(ctx1) }()
	l1, err := New(c.env.Client, d1, Options{Wait: 3 * time.Second})
	require.NoError(t, err)
	require.NoError(t, l1.Start(ctx1))
	awaitCachedName(t, l1, name)
	err = l1.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"})
	require.ErrorIs(t, err, fleetlock.ErrDrainBlocked, "the budget refuses")
	stop1()
	<-ran

	// Replica 2 starts; the budget is relaxed; nobody asks.
	l2, d2 := c.lock(Options{Wait: 3 * time.Second})
	awaitCachedName(t, l2, name)
	require.NoError(t, c.env.Client.PolicyV1().PodDisruptionBudgets(c.ns).Delete(ctx, "stuck", metav1.DeleteOptions{}))
	relaxed := time.Now()
	c.waitFor("the pod evicted by replica 2", func(ctx context.Context) (bool, error) {
		_, err := c.env.Client.CoreV1().Pods(c.ns).Get(ctx, "stuck", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	t.Logf("pod gone %s after the budget was relaxed", time.Since(relaxed).Round(time.Millisecond))
	p, ok := d2.Progress(name)
	require.True(t, ok, "replica 2 runs the drain")
	assert.Equal(t, name, p.Node)
	// The node's next request is answered 2xx at once.
	require.NoError(t, l2.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
}

// A resumed drain's Release/Force deadline counts from the grant, not from the
// replica's start: GrantedAt is the promotion's time.
func TestGrantedAt(t *testing.T) {
	since := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{
		AnnotationStatus: string(StateRebooting), AnnotationGroup: "default", AnnotationSince: since.Format(time.RFC3339Nano),
	}}}
	assert.Equal(t, since, GrantedAt(n))
	n.Annotations[AnnotationStatus] = string(StateReady)
	assert.True(t, GrantedAt(n).IsZero())
}

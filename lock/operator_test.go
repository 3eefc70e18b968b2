package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// An operator's writes on a holder mid-drain are respected: a manual release
// (kubectl annotate rebootmanager/status=Ready) stops the wait and the drain and is not
// undone; their own annotations and an uncordon survive our later writes.
func TestOperatorWritesMidDrain(t *testing.T) {
	// Not eventsOnly: a release that lands between the drain wait's check of the cache
	// and its next taking of the node's signal is noticed by the 5 s fallback timer
	// only (lock/answer.go, awaitDrain; seen in CI). Known race, left for planning.
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "operator", 2, simkubelet.NodeOptions{})
	released, annotated := f.names[0], f.names[1]
	drainer := &locktest.Endless{}
	l, err := New(env.Client, drainer, Options{Wait: 20 * time.Second, Policy: testPolicy{slots: 2}})
	require.NoError(t, err)
	lctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	require.NoError(t, l.Start(lctx))
	awaitCached(t, l, f)

	errs := make(chan error, 1)
	go func() { errs <- l.PreReboot(ctx, f.params(released, "default")) }()
	awaitState(t, l, released, StateRebooting)
	start := time.Now()
	patch(t, env, released, `{"metadata":{"annotations":{"rebootmanager/status":"Ready"}}}`)
	select {
	case err := <-errs:
		assert.ErrorIs(t, err, fleetlock.ErrLockHeld)
		assert.ErrorContains(t, err, "released while it drained")
		t.Logf("answered %s after the release", time.Since(start).Round(time.Millisecond))
	case <-time.After(eventWait):
		t.Fatal("the held request did not notice the manual release")
	}
	assert.Contains(t, drainer.Forgotten(), released, "its drain is stopped")
	st, _ := nodeLockState(t, env.Client, released)
	assert.Equal(t, StateReady, st.State, "the manual release is not undone")

	// Another holder: the operator adds a note and uncordons it mid-drain.
	go func() { errs <- l.PreReboot(ctx, f.params(annotated, "default")) }()
	awaitState(t, l, annotated, StateRebooting)
	patch(t, env, annotated, `{"metadata":{"annotations":{"ops.example.com/reason":"kernel"}},"spec":{"unschedulable":false}}`)
	time.Sleep(1500 * time.Millisecond) // a wake-up or two of the held request
	n, err := env.Client.CoreV1().Nodes().Get(ctx, annotated, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, n.Spec.Unschedulable, "the operator's uncordon is not overwritten")
	assert.Equal(t, string(StateRebooting), n.Annotations[AnnotationStatus], "still the holder")
	require.NoError(t, l.Release(ctx, annotated))
	n, err = env.Client.CoreV1().Nodes().Get(ctx, annotated, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "kernel", n.Annotations["ops.example.com/reason"], "the operator's annotation survives our writes")
	assert.Error(t, <-errs, "never told to reboot: its drain never finished")
}

func patch(t *testing.T, env *controlplane.Env, node, body string) {
	t.Helper()
	_, err := env.Client.CoreV1().Nodes().Patch(t.Context(), node, types.MergePatchType, []byte(body), metav1.PatchOptions{})
	require.NoError(t, err)
}

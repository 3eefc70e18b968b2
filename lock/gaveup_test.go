package lock

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Issue 15, item 6: under the Release failure policy a drain that gave up is not
// started again at the node's next request while nothing has changed: the node is
// refused before it is cordoned, and no pod is evicted again.
func TestReleasedDrainNotRestartedByTheNextRequest(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "giveup-" + c.id
	_, id := c.addNode(name, "1f1e1d1c1b1a19181716151413121110")
	l, drainer := c.lockWithDrains(Options{Wait: 20 * time.Second},
		evict.Options{FailurePolicy: evict.Release, Timeout: time.Second})
	c.pod("other", name) // evictable: evicted once by the first drain
	c.pod("stuck", name)
	c.budget("stuck", "stuck", 0) // refused for ever
	c.waitRunning(name, "stuck")
	awaitCachedName(t, l, name)
	p := fleetlock.ClientParams{ID: id, Group: "default"}

	err := l.PreReboot(ctx, p)
	require.ErrorIs(t, err, fleetlock.ErrDrainBlocked, "the first drain gives up and releases the slot")
	c.waitFor("the slot released and the node uncordoned", func(ctx context.Context) (bool, error) {
		n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		return err == nil && !n.Spec.Unschedulable && lockOf(n).State != StateRebooting, err
	})
	evictions := evictionAnswers(t, drainer)
	require.Positive(t, evictions)
	before, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)

	for range 3 { // Zincati asks again: the same refusal, no cordon, no eviction
		err = l.PreReboot(ctx, p)
		assert.ErrorIs(t, err, fleetlock.ErrDrainBlocked)
		n, gerr := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, gerr)
		assert.False(t, n.Spec.Unschedulable, "not cordoned again")
		assert.NotEqual(t, StateRebooting, lockOf(n).State, "no slot taken")
	}
	assert.Equal(t, evictions, evictionAnswers(t, drainer), "no eviction asked again")
	after, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	// The requests wrote their waiting marks, and nothing else: no claim, no cordon.
	assert.Equal(t, before.Annotations[AnnotationSince], after.Annotations[AnnotationSince], "no claim written")
	assert.Equal(t, before.Annotations[AnnotationStatus], after.Annotations[AnnotationStatus])
	assert.Equal(t, before.Spec, after.Spec, "no cordon")
	_, waiting := WaiterOf(after)
	assert.True(t, waiting, "it waits, refused")
	t.Logf("refusal: %v", err)
}

// evictionAnswers sums the drainer's rebootmanager_evictions_total over its results.
func evictionAnswers(t *testing.T, d *evict.Drainer) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(d))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "rebootmanager_evictions_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

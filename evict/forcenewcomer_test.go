package evict_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
)

// Under Force, a pod that arrives after the drain's Timeout (found by the final
// check) is evicted, budgets respected, for a Timeout of its own before it is
// deleted. Before, every target launched once the drain was Forcing was DELETEd
// at once: the newcomer's budget was never asked.
func TestForceEvictsANewcomerBeforeDeletingIt(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	node := c.addNode("force", true)
	// An earlier process evicted "held"; its finalizer keeps it terminating, and
	// the drain waiting, past Timeout.
	held := c.bareOn(node, "held", nil)
	_, err := c.client.CoreV1().Pods(c.ns).Patch(ctx, held.Name, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":["evict.test/hold"]}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	release := func() {
		_, _ = c.client.CoreV1().Pods(c.ns).Patch(context.WithoutCancel(t.Context()), held.Name, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	}
	t.Cleanup(release)
	c.waitRunning(node, "held", 1)
	require.NoError(t, c.client.CoreV1().Pods(c.ns).Delete(ctx, held.Name, metav1.DeleteOptions{}))
	c.cordon(node, true)

	cfg, counter := c.env.CountingConfig()
	const timeout = 2 * time.Second
	d := c.drainer(kubernetes.NewForConfigOrDie(cfg), evict.Options{
		FailurePolicy: evict.Force, Timeout: timeout, BackoffBase: 100 * time.Millisecond, BackoffMax: 300 * time.Millisecond,
	})
	p := c.start(d, node)
	c.waitFor(30*time.Second, "the drain forcing", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		return p.Phase == evict.PhaseForcing, nil
	})

	// A pod under a budget that allows nothing arrives; then "held" goes, and the
	// final check finds the newcomer.
	c.bareOn(node, "late", tolerateAll)
	one := intstr.FromInt32(1)
	c.pdb("late", "late", &one, nil)
	c.waitRunning(node, "late", 1)
	c.waitPDB("late", 1, 0)
	require.Zero(t, counter.Count("create pods/eviction"), "the terminating pod is not evicted again")
	release()

	c.waitFor(30*time.Second, "the newcomer evicted or deleted", func(ctx context.Context) (bool, error) {
		return counter.Count("create pods/eviction")+counter.Count("delete pods") > 0, nil
	})
	assert.Zero(t, counter.Count("delete pods"), "the newcomer's budget is asked first")
	p = awaitDone(t, d, node, p, time.Minute)
	require.True(t, p.Drained, "progress: %s", p)
	assert.Positive(t, counter.Count("create pods/eviction"), "evicted, refused by its budget")
	assert.Equal(t, 1, counter.Count("delete pods"), "then deleted, its own Timeout past")
	assert.Equal(t, 1, p.Forced)
}

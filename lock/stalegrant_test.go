package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// A release decided on evidence about one grant never releases another: the stale
// holder loop sees, in a cache that lags, grant 1 of n1 back from its reboot; in the
// API server n1 was meanwhile released and granted again (grant 2, told to reboot,
// its boot ID unchanged since). The release's write, conditioned on the cached
// object, gets 409 Conflict; its retry must not release grant 2, whose reboot nobody
// has seen.
func TestReleaseRetryKeepsOtherGrant(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "regrant-" + c.id
	_, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 30 * time.Second, Policy: testPolicy{}})
	awaitCachedName(t, l, name)
	p := fleetlock.ClientParams{ID: id, Group: "default"}
	require.NoError(t, l.PreReboot(ctx, p)) // grant 1, told to reboot
	require.NoError(t, c.env.Kubelet.Boot(ctx, name))
	var stale *corev1.Node
	require.Eventually(t, func() bool {
		obj, ok, _ := l.nodes.GetIndexer().GetByKey(name)
		if ok {
			stale = obj.(*corev1.Node).DeepCopy()
		}
		return ok && back(stale, grantOf(stale))
	}, time.Minute, 10*time.Millisecond, "the cache shows grant 1 back")

	_, _, err := ReleaseNode(ctx, c.env.Client, name, l.opts.Clock) // the operator
	require.NoError(t, err)
	awaitState(t, l, name, StateReady)
	require.NoError(t, l.PreReboot(ctx, p)) // grant 2, told to reboot
	g2 := grantOf(c.holding(name))
	require.NotEqual(t, grantOf(stale).Promoted, g2.Promoted)

	// The cache lags: it still shows grant 1, back.
	require.NoError(t, l.nodes.GetIndexer().Update(stale))
	l.releaseStale(ctx, time.Nanosecond)
	time.Sleep(time.Millisecond)
	l.releaseStale(ctx, time.Nanosecond)

	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, StateRebooting, lockOf(n).State, "grant 2 keeps its slot: its node has not rebooted")
	assert.Equal(t, g2.Promoted, lockOf(n).Since)
	assert.True(t, n.Spec.Unschedulable, "grant 2's node stays cordoned")
}

// A replica whose cache lags still shows a released node holding: resuming its drain
// from that snapshot evicts the pods of a node that holds no slot and is no longer
// cordoned. Resume acts only on a holder a fresh read confirms.
func TestResumeSkipsReleasedHolderInStaleCache(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "resume-stale-" + c.id
	_, id := c.addNode(name, "")
	l, d := c.lock(Options{Wait: 30 * time.Second, Policy: testPolicy{}})
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}))
	awaitState(t, l, name, StateRebooting)
	obj, _, _ := l.nodes.GetIndexer().GetByKey(name)
	stale := obj.(*corev1.Node).DeepCopy()

	_, _, err := ReleaseNode(ctx, c.env.Client, name, l.opts.Clock) // the operator
	require.NoError(t, err)
	awaitState(t, l, name, StateReady)
	_, ok := d.Progress(name)
	require.False(t, ok, "the release stopped the drain")
	c.pod("serving", name)
	c.waitRunning(name, "serving")

	require.NoError(t, l.nodes.GetIndexer().Update(stale)) // the cache lags
	l.resumeDrains(ctx)
	p, ok := d.Progress(name)
	assert.False(t, ok, "no drain of a released node: %+v", p)
	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, n.Spec.Unschedulable)
}

// Someone else uncordons a holder while its drain is blocked by a budget: the node
// serves again by their decision. The drain stops (it would otherwise go on evicting
// the pods that the scheduler now places on the node, and evict the blocked one as
// soon as its budget allows), and the request answers node_uncordoned at once, not
// drain_blocked after its wait.
func TestUncordonedMidDrain(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "uncordon-mid-" + c.id
	_, id := c.addNode(name, "")
	c.pod("stuck", name)
	c.budget("stuck", "stuck", 0)
	c.waitRunning(name, "stuck")
	l, d := c.lock(Options{Wait: 3 * time.Second, Policy: testPolicy{}})
	awaitCachedName(t, l, name)
	p := fleetlock.ClientParams{ID: id, Group: "default"}
	require.ErrorIs(t, l.PreReboot(ctx, p), fleetlock.ErrDrainBlocked)

	_, err := c.env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
		[]byte(`{"spec":{"unschedulable":false}}`), metav1.PatchOptions{FieldManager: "other-controller"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		c, ok := l.cachedNode(name)
		return ok && !c.Spec.Unschedulable
	}, time.Minute, 10*time.Millisecond)

	err = l.PreReboot(ctx, p)
	t.Logf("answer: %v", err)
	require.ErrorIs(t, err, fleetlock.ErrNodeUncordoned)
	_, ok := d.Progress(name)
	assert.False(t, ok, "the drain of the uncordoned node stopped")
	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, n.Spec.Unschedulable, "not cordoned again over their decision")
	assert.Equal(t, StateRebooting, lockOf(n).State, "the slot stays held")
}

// "Back" is a boot ID other than the one at the 2xx, not at the grant: a holder that
// rebooted on its own while its drain was blocked (a crash, a power cycle) has a new
// boot ID before its 2xx. Told to reboot, it goes down without being marked NotReady
// (its Node keeps Ready and that boot ID); its Zincati's steady-state must be held,
// not release the slot while the machine is still coming up.
func TestBackMeansAfterThe2xx(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "reboot-mid-drain-" + c.id
	_, id := c.addNode(name, "")
	c.pod("stuck", name)
	c.budget("stuck", "stuck", 0)
	c.waitRunning(name, "stuck")
	l, _ := c.lock(Options{Wait: 4 * time.Second, Policy: testPolicy{}})
	awaitCachedName(t, l, name)
	p := fleetlock.ClientParams{ID: id, Group: "default"}
	require.ErrorIs(t, l.PreReboot(ctx, p), fleetlock.ErrDrainBlocked)
	granted := grantOf(c.holding(name))

	require.NoError(t, c.env.Kubelet.Boot(ctx, name)) // an unplanned reboot mid-drain
	beforeThe2xx := c.holding(name)                   // the new boot ID, not yet recorded
	require.NotEqual(t, granted.BootID, beforeThe2xx.Status.NodeInfo.BootID)
	require.NoError(t, c.env.Client.PolicyV1().PodDisruptionBudgets(c.ns).Delete(ctx, "stuck", metav1.DeleteOptions{}))
	c.waitFor("the 2xx", func(ctx context.Context) (bool, error) { return l.PreReboot(ctx, p) == nil, nil })
	n := c.holding(name)
	require.NotEqual(t, granted.BootID, n.Status.NodeInfo.BootID)

	c.env.Kubelet.Freeze(name) // rebooting: Ready and the boot ID of the 2xx stay
	released, err := l.SteadyState(ctx, p)
	t.Logf("steady-state: released=%v err=%v", released, err)
	assert.False(t, released, "released before the node came back from the reboot it was told to do")
	assert.ErrorIs(t, err, fleetlock.ErrNodeNotReady)
	n, err = c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, StateRebooting, lockOf(n).State, "the slot stays held")

	// The same when the steady-state starts from a cache that has not seen the boot ID
	// recorded anew at the 2xx: the grant it waits on is the fresh read's.
	_, err = l.awaitBack(ctx, beforeThe2xx)
	assert.ErrorIs(t, err, fleetlock.ErrNodeNotReady, "back by a boot ID read from a stale cache")
	require.NoError(t, c.env.Kubelet.Boot(ctx, name))
}

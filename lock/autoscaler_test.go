package lock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Issue 15 item 4: while a node holds a slot it carries cluster-autoscaler's
// scale-down-disabled and Karpenter's do-not-disrupt, written with the grant and
// removed at release, except a value an operator had set, which stays.
func TestAutoscalerAnnotationsWhileHolding(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	name := "asg-" + c.id
	_, id := c.addNode(name, "")
	// The operator's own Karpenter value, set before the grant.
	_, err := c.env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"karpenter.sh/do-not-disrupt":"false"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	l, _ := c.lock(Options{Wait: 10 * time.Second})
	awaitCachedName(t, l, name)
	p := fleetlock.ClientParams{ID: id, Group: "default"}
	require.NoError(t, l.PreReboot(ctx, p))

	n, err := c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "true", n.Annotations["cluster-autoscaler.kubernetes.io/scale-down-disabled"], "written with the grant")
	assert.Equal(t, "false", n.Annotations["karpenter.sh/do-not-disrupt"], "the operator's value stays")
	assert.Equal(t, "cluster-autoscaler.kubernetes.io/scale-down-disabled", n.Annotations[AnnotationAutoscalerKeys])

	require.NoError(t, c.env.Kubelet.Reboot(ctx, name, 0))
	released, err := l.SteadyState(ctx, p)
	require.NoError(t, err)
	require.True(t, released)
	n, err = c.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.NotContains(t, n.Annotations, "cluster-autoscaler.kubernetes.io/scale-down-disabled", "ours, removed at release")
	assert.Equal(t, "false", n.Annotations["karpenter.sh/do-not-disrupt"], "the operator's, kept")
	assert.NotContains(t, n.Annotations, AnnotationAutoscalerKeys)
}

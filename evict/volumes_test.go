package evict_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/evict"
)

// attachVolume creates a VolumeAttachment of node, attached, as a CSI attacher
// leaves it.
func (c *cluster) attachVolume(node, name string) {
	c.t.Helper()
	ctx := context.Background()
	pv := "pv-" + name
	va, err := c.client.StorageV1().VolumeAttachments().Create(ctx, &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.VolumeAttachmentSpec{
			Attacher: "csi.example.com",
			NodeName: node,
			Source:   storagev1.VolumeAttachmentSource{PersistentVolumeName: &pv},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
	c.t.Cleanup(func() {
		_ = c.client.StorageV1().VolumeAttachments().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	va.Status.Attached = true
	_, err = c.client.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{})
	require.NoError(c.t, err)
}

// Issue 15 item 3's failing input: a VolumeAttachment of the node stays attached
// after its pods are gone (the attach-detach controller deletes it a few seconds
// later). The drain is not Drained while it is attached: it waits (its phase and
// VolumesAttached say so, as do an Event and a gauge), and past VolumeDetachTimeout
// under KeepRefusing it is blocked (VolumesAttached). Before, the drain reported
// Drained at once.
func TestDrainWaitsForVolumesToDetach(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("vol", true)
	spare := c.addNode("vol2", false)
	c.deployment("app", 1, nil)
	c.waitRunning(node, "app", 1)
	c.cordon(spare, false)
	c.cordon(node, true)
	va := "va-" + c.id
	c.attachVolume(node, va)

	d := c.drainer(c.client, evict.Options{BackoffBase: 100 * time.Millisecond, VolumeDetachTimeout: 3 * time.Second})
	p := c.start(d, node)
	c.waitFor(30*time.Second, "the drain waiting for volumes", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		require.False(t, p.Drained, "drained with a volume attached: %s", p)
		return p.Phase == evict.PhaseWaitingForVolumes, nil
	})
	assert.Equal(t, []string{va}, p.VolumesAttached)
	assert.Zero(t, p.PodsLeft)
	assert.Contains(t, p.String(), va)
	assert.Equal(t, 1.0, gather(t, d)[`rebootmanager_drain_volumes_attached{node="`+node+`"}`])
	c.waitEvents(node, evict.ReasonDrainWaitingForVolumes)

	var b evict.Block
	c.waitFor(30*time.Second, "the drain blocked by the volume", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		require.False(t, p.Drained, "drained with a volume attached: %s", p)
		var ok bool
		b, ok = p.Blocked()
		return ok, nil
	})
	assert.Equal(t, evict.BlockedByVolumes, b.Reason)
	assert.Equal(t, va, b.Object)
	assert.Positive(t, gather(t, d)[`rebootmanager_drain_blocked_since_timestamp_seconds{node="`+node+`",reason="VolumesAttached"}`])
	c.waitEvents(node, evict.ReasonDrainBlocked)

	// The attach-detach controller detaches and deletes it: drained.
	require.NoError(t, c.client.StorageV1().VolumeAttachments().Delete(t.Context(), va, metav1.DeleteOptions{}))
	p = awaitDone(t, d, node, p, 30*time.Second)
	require.True(t, p.Drained, "progress: %s", p)
	assert.Empty(t, p.VolumesAttached)
}

// Under Release, volumes attached past VolumeDetachTimeout make the drain fail; an
// attachment of another node, or one not attached, holds nothing; one being
// detached (deleted, its finalizer kept while the attacher works) still holds.
func TestVolumesPastTimeoutUnderRelease(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("rel", true)
	other := c.addNode("oth", false)
	c.cordon(node, true)
	c.attachVolume(node, "va-"+c.id)
	c.attachVolume(other, "va-other-"+c.id)
	c.attachVolume(node, "va-off-"+c.id)
	va, err := c.client.StorageV1().VolumeAttachments().Get(t.Context(), "va-off-"+c.id, metav1.GetOptions{})
	require.NoError(t, err)
	va.Status.Attached = false
	_, err = c.client.StorageV1().VolumeAttachments().UpdateStatus(t.Context(), va, metav1.UpdateOptions{})
	require.NoError(t, err)
	detaching := "va-detaching-" + c.id
	c.attachVolume(node, detaching)
	_, err = c.client.StorageV1().VolumeAttachments().Patch(t.Context(), detaching, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":["external-attacher/csi-example-com"]}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = c.client.StorageV1().VolumeAttachments().Patch(context.WithoutCancel(t.Context()), detaching, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	require.NoError(t, c.client.StorageV1().VolumeAttachments().Delete(t.Context(), detaching, metav1.DeleteOptions{}))

	d := c.drainer(c.client, evict.Options{FailurePolicy: evict.Release, BackoffBase: 100 * time.Millisecond, VolumeDetachTimeout: time.Second})
	p := awaitDone(t, d, node, c.start(d, node), 30*time.Second)
	require.True(t, p.Failed, "progress: %s", p)
	assert.ElementsMatch(t, []string{"va-" + c.id, detaching}, p.VolumesAttached,
		"the node's own attachments that are attached, the one being detached included")
}

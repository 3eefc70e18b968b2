package evict

import (
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// byNode indexes VolumeAttachments by spec.nodeName.
const byNode = "nodeName"

// volumesInformer watches VolumeAttachments and wakes the drain of the node each
// concerns; the index serves the waits, a fresh LIST the final decision.
func (d *Drainer) volumesInformer(inf cache.SharedIndexInformer) {
	if err := inf.AddIndexers(cache.Indexers{byNode: func(obj any) ([]string, error) {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok {
			return []string{va.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		d.log.Error("cannot index volume attachments", "err", err)
	}
	wake := func(obj any) {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok {
			d.mu.Lock()
			if dr := d.drains[va.Spec.NodeName]; dr != nil {
				dr.poke()
			}
			d.mu.Unlock()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    wake,
		UpdateFunc: func(_, obj any) { wake(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			wake(obj)
		},
	}); err != nil {
		d.log.Error("cannot watch volume attachments", "err", err)
	}
	d.volumes = inf.GetIndexer()
}

// attachedVolumes names the VolumeAttachments of node that are attached, from the
// watch's cache: what the drain waits for.
func (d *Drainer) attachedVolumes(node string) []string {
	if !d.isRunning() {
		return nil
	}
	objs, _ := d.volumes.ByIndex(byNode, node)
	var names []string
	for _, obj := range objs {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok && va.Status.Attached {
			names = append(names, va.Name)
		}
	}
	sort.Strings(names)
	return names
}

// volumesDetached reports whether no VolumeAttachment of the node is attached: the
// watch's cache says so and a fresh LIST confirms it. It records what is still
// attached in dr.attached.
func (dr *drain) volumesDetached() bool {
	if dr.attached = dr.d.attachedVolumes(dr.node); len(dr.attached) > 0 {
		return false
	}
	list, err := dr.d.client.StorageV1().VolumeAttachments().List(dr.ctx, metav1.ListOptions{})
	if err != nil {
		if dr.ctx.Err() == nil {
			dr.listErr = fmt.Errorf("list volume attachments: %w", err)
		}
		return false
	}
	dr.listErr = nil
	for i := range list.Items {
		if va := &list.Items[i]; va.Spec.NodeName == dr.node && va.Status.Attached {
			dr.attached = append(dr.attached, va.Name)
		}
	}
	return len(dr.attached) == 0
}

// awaitVolumes is the step of a drain whose pods are gone but whose node still has
// volumes attached. Past Options.VolumeDetachTimeout the FailurePolicy applies:
// KeepRefusing blocks (BlockedByVolumes), Release fails, Force reports the node
// drained anyway with a Warning Event.
func (dr *drain) awaitVolumes(now time.Time) {
	if dr.phase != PhaseWaitingForVolumes {
		dr.volumesSince = now
		dr.setPhase(PhaseWaitingForVolumes)
		dr.log.Info("pods gone; waiting for volumes to detach", "volumeAttachments", dr.attached)
		dr.eventf(nil, corev1.EventTypeNormal, ReasonDrainWaitingForVolumes, actionDrain,
			"Pods gone; waiting for %d volumes to detach: %s", len(dr.attached), listNames(dr.attached))
	}
	dr.volumeBlocks = nil
	if now.Sub(dr.volumesSince) < dr.d.opts.VolumeDetachTimeout {
		return
	}
	switch dr.d.opts.FailurePolicy {
	case Release:
		dr.fail()
	case Force:
		dr.log.Warn("volumes still attached past the timeout; drained anyway", "volumeAttachments", dr.attached)
		dr.eventf(nil, corev1.EventTypeWarning, ReasonDrainVolumesAttached, actionDrain,
			"Volumes still attached after %s, drained anyway (FailurePolicy Force): %s", dr.d.opts.VolumeDetachTimeout, listNames(dr.attached))
		dr.succeed()
	default:
		for _, va := range dr.attached {
			dr.volumeBlocks = append(dr.volumeBlocks, Block{Reason: BlockedByVolumes, Object: va, Message: fmt.Sprintf(
				"VolumeAttachment %s is still attached to the node %s after its pods left", va, dr.d.opts.VolumeDetachTimeout)})
		}
	}
}

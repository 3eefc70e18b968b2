package evict

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Reasons of the Events a drain posts on its Node.
const (
	// ReasonDrainStarted (Normal): the drain began; the note counts the pods to evict.
	ReasonDrainStarted = "DrainStarted"
	// ReasonDrainUnmanagedPods (Warning): pods no controller recreates are evicted.
	ReasonDrainUnmanagedPods = "DrainUnmanagedPods"
	// ReasonDrainLocalData (Warning): pods with emptyDir volumes are evicted; their
	// data is lost.
	ReasonDrainLocalData = "DrainLocalData"
	// ReasonDrainBlocked (Warning): something refuses to let a pod leave (a Block:
	// a PodDisruptionBudget, an admission policy or webhook, a terminating
	// namespace, missing permissions, persistent errors, pods returning). Posted
	// when the block begins, once per budget (related: the budget) or per pod
	// (related: the pod), not per retry; posted again every
	// Options.BlockedEventInterval while it lasts, since Events expire.
	ReasonDrainBlocked = "DrainBlocked"
	// ReasonDrainSkippedTerminatingPod (Warning): a pod terminating on a node whose
	// kubelet is silent (Ready Unknown) past its grace period and Options.SkipWaitForDeleteTimeout counts as
	// gone, one Event per pod.
	ReasonDrainSkippedTerminatingPod = "DrainSkippedTerminatingPod"
	// ReasonDrainWaitingForVolumes (Normal): the pods are gone; the drain waits for
	// the node's VolumeAttachments to detach.
	ReasonDrainWaitingForVolumes = "DrainWaitingForVolumes"
	// ReasonDrainVolumesAttached (Warning): under FailurePolicy Force, volumes still
	// attached past Options.VolumeDetachTimeout; the node is reported drained anyway.
	ReasonDrainVolumesAttached = "DrainVolumesAttached"
	// ReasonDrainSucceeded (Normal): every pod that had to leave is gone.
	ReasonDrainSucceeded = "DrainSucceeded"
	// ReasonDrainFailed (Warning): the drain gave up (FailurePolicy Release).
	ReasonDrainFailed = "DrainFailed"
	// ReasonDrainForced (Warning): a pod was deleted without eviction (FailurePolicy
	// Force), one Event per pod.
	ReasonDrainForced = "DrainForced"
)

// Actions of those Events (events.k8s.io/v1 requires one).
const (
	actionDrain  = "Drain"
	actionEvict  = "Evict"
	actionDelete = "Delete"
)

// eventController is the reporting controller of the Drainer's own recorder.
const eventController = "reboot-manager"

// maxNote is the length limit of an Event's note.
const maxNote = 1024

// NodeRef is the object an Event about a Node regards (the drain's, the lock's, the
// replacer's). Like the kubelet, it uses the node's name as its UID, so no request is
// needed; `kubectl describe node` shows Events referring to the node by name or by UID.
func NodeRef(node string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node, UID: types.UID(node)}
}

// podRef and pdbRef are the objects an Event is related to. The events library
// merges Events that differ only in their notes into one series, so an Event about a
// particular pod or budget names it as related.
func podRef(key string, uid types.UID) *corev1.ObjectReference {
	ns, name, _ := strings.Cut(key, "/")
	return &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name, UID: uid}
}

func pdbRef(key string) *corev1.ObjectReference {
	ns, name, _ := strings.Cut(key, "/")
	return &corev1.ObjectReference{Kind: "PodDisruptionBudget", APIVersion: "policy/v1", Namespace: ns, Name: name}
}

// eventf posts an Event on the drain's node, if there is a recorder; related may be
// nil.
func (dr *drain) eventf(related *corev1.ObjectReference, eventType, reason, action, format string, args ...any) {
	r := dr.d.recorder
	if r == nil {
		return
	}
	note := fmt.Sprintf(format, args...)
	if len(note) > maxNote {
		note = note[:maxNote-3] + "..."
	}
	if related == nil {
		r.Eventf(NodeRef(dr.node), nil, eventType, reason, action, "%s", note)
		return
	}
	r.Eventf(NodeRef(dr.node), related, eventType, reason, action, "%s", note)
}

// announce logs and posts the drain's start, and the pods whose eviction loses
// something: no controller recreates them, or their emptyDir data.
func (dr *drain) announce() {
	var bare, local []string
	for _, t := range dr.targets {
		if t.unreplicated {
			bare = append(bare, t.key)
			dr.log.Warn("evicting a pod no controller recreates", "pod", t.key)
		}
		if t.localStorage {
			local = append(local, t.key)
			dr.log.Warn("evicting a pod with emptyDir data", "pod", t.key)
		}
	}
	dr.log.Info("drain started", "pods", len(dr.targets), "unmanaged", len(bare), "localData", len(local))
	dr.eventf(nil, corev1.EventTypeNormal, ReasonDrainStarted, actionDrain, "Draining node: %d pods to evict", len(dr.targets))
	if len(bare) > 0 {
		dr.eventf(nil, corev1.EventTypeWarning, ReasonDrainUnmanagedPods, actionEvict,
			"Evicting %d pods that no controller recreates: %s", len(bare), listNames(bare))
	}
	if len(local) > 0 {
		dr.eventf(nil, corev1.EventTypeWarning, ReasonDrainLocalData, actionEvict,
			"Evicting %d pods whose emptyDir data is lost: %s", len(local), listNames(local))
	}
}

// listNames joins names for a note, eliding after a few.
func listNames(names []string) string {
	const most = 10
	if len(names) <= most {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:most], ", "), len(names)-most)
}

package evict

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podClass is what a drain does with a pod bound to the node.
type podClass int

const (
	// evictIt: the pod must leave the node.
	evictIt podClass = iota
	// mirrorPod: the API's copy of a static pod; only the kubelet can remove it.
	mirrorPod
	// daemonPod: managed by a DaemonSet, which would put it right back.
	daemonPod
	// finishedPod: Succeeded or Failed; it runs nothing a reboot could disrupt.
	finishedPod
)

func (c podClass) String() string {
	switch c {
	case evictIt:
		return "evict"
	case mirrorPod:
		return "mirror"
	case daemonPod:
		return "daemonset"
	case finishedPod:
		return "finished"
	}
	return "unknown"
}

// MustLeave reports whether a drain evicts the pod: it is bound to the node and is not
// a mirror pod, a DaemonSet's pod or finished.
func MustLeave(pod *corev1.Pod) bool { return classify(pod) == evictIt }

// classify says whether a pod bound to the node must leave it. Pods without a
// controller and pods with emptyDir volumes must leave too (see unmanaged and
// hasLocalData). A pod already terminating must leave as well: the drain waits for it.
func classify(pod *corev1.Pod) podClass {
	if _, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		return mirrorPod
	}
	if finished(pod) {
		return finishedPod
	}
	// Any group's DaemonSet: apps/v1, or a look-alike such as an "advanced" DaemonSet,
	// whose controller would recreate the pod on the same node.
	if c := metav1.GetControllerOf(pod); c != nil && c.Kind == "DaemonSet" {
		return daemonPod
	}
	return evictIt
}

// finished reports whether the pod has run to completion (or failed for good).
func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// unmanaged reports whether no controller owns the pod: once evicted, nothing
// recreates it.
func unmanaged(pod *corev1.Pod) bool {
	return metav1.GetControllerOf(pod) == nil
}

// hasLocalData reports whether the pod has an emptyDir volume, whose data is lost
// when the pod leaves the node.
func hasLocalData(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir != nil {
			return true
		}
	}
	return false
}

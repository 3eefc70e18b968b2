package evict

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The filters below carry the names of kubectl's (k8s.io/kubectl/pkg/drain/filters.go)
// so that a reader who knows `kubectl drain` finds the same decisions. They differ in
// what they conclude: kubectl refuses to drain without --ignore-daemonsets,
// --delete-emptydir-data or --force; a drain here never refuses on a pod's kind. It
// skips what must stay (mirrorPodFilter, daemonSetFilter, finishedPodFilter) and
// evicts the rest, with a warning for what is lost (unreplicatedFilter,
// localStorageFilter).

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

// skipFilters are the filters that keep a pod on the node, in kubectl's order. Each
// returns the class of a pod it skips, and false for a pod it lets through.
var skipFilters = []func(*corev1.Pod) (podClass, bool){mirrorPodFilter, finishedPodFilter, daemonSetFilter}

// MustLeave reports whether a drain evicts the pod: it is bound to the node and is not
// a mirror pod, a DaemonSet's pod or finished.
func MustLeave(pod *corev1.Pod) bool { return classify(pod) == evictIt }

// classify says whether a pod bound to the node must leave it. Pods without a
// controller and pods with emptyDir volumes must leave too (see unreplicatedFilter and
// localStorageFilter). A pod already terminating must leave as well: the drain waits
// for it (see skipDeletedFilter for when it stops waiting).
func classify(pod *corev1.Pod) podClass {
	for _, skip := range skipFilters {
		if c, ok := skip(pod); ok {
			return c
		}
	}
	return evictIt
}

// mirrorPodFilter skips mirror pods (annotation kubernetes.io/config.mirror): only the
// kubelet removes them.
func mirrorPodFilter(pod *corev1.Pod) (podClass, bool) {
	_, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]
	return mirrorPod, ok
}

// finishedPodFilter skips pods that have Succeeded or Failed. kubectl deletes them; a
// reboot disrupts nothing of theirs, and evicting them would only lose their logs.
func finishedPodFilter(pod *corev1.Pod) (podClass, bool) {
	return finishedPod, finished(pod)
}

// daemonSetFilter skips pods controlled by a DaemonSet of any group: apps/v1, or a
// look-alike such as an "advanced" DaemonSet, whose controller would recreate the pod
// on the same node. Unlike kubectl, it does not check that the DaemonSet exists.
func daemonSetFilter(pod *corev1.Pod) (podClass, bool) {
	c := metav1.GetControllerOf(pod)
	return daemonPod, c != nil && c.Kind == "DaemonSet"
}

// unreplicatedFilter reports whether no controller owns the pod: once evicted,
// nothing recreates it. kubectl refuses such pods without --force; the drain evicts
// them and says so.
func unreplicatedFilter(pod *corev1.Pod) bool {
	return metav1.GetControllerOf(pod) == nil
}

// localStorageFilter reports whether the pod has an emptyDir volume, whose data is
// lost when the pod leaves the node. kubectl refuses such pods without
// --delete-emptydir-data; the drain evicts them and says so.
func localStorageFilter(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir != nil {
			return true
		}
	}
	return false
}

// finished reports whether the pod has run to completion (or failed for good).
func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

package evict

import (
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func owner(apiVersion, kind string, controller bool) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: "owner", UID: types.UID("u-" + kind), Controller: &controller}
}

func TestFilters(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name      string
		pod       corev1.Pod
		class     podClass
		unmanaged bool
		localData bool
	}{
		{name: "replicaset pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "ReplicaSet", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}, class: evictIt},
		{name: "bare pod", pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning}}, class: evictIt, unmanaged: true},
		{name: "pod owned but not controlled", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "DaemonSet", false)}},
		}, class: evictIt, unmanaged: true},
		{name: "pending pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "StatefulSet", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodPending},
		}, class: evictIt},
		{name: "emptyDir pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "ReplicaSet", true)}},
			Spec: corev1.PodSpec{Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			}},
		}, class: evictIt, localData: true},
		{name: "bare emptyDir pod", pod: corev1.Pod{
			Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}}},
		}, class: evictIt, unmanaged: true, localData: true},
		{name: "terminating pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now, OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "ReplicaSet", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}, class: evictIt},
		{name: "running job pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("batch/v1", "Job", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}, class: evictIt},
		{name: "completed job pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("batch/v1", "Job", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodSucceeded},
		}, class: finishedPod},
		{name: "failed bare pod", pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodFailed}}, class: finishedPod, unmanaged: true},
		{name: "daemonset pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps/v1", "DaemonSet", true)}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}, class: daemonPod},
		{name: "look-alike daemonset pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{owner("apps.kruise.io/v1alpha1", "DaemonSet", true)}},
		}, class: daemonPod},
		{name: "mirror pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "abc"}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}, class: mirrorPod, unmanaged: true},
		{name: "mirror pod owned by its node", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Annotations:     map[string]string{corev1.MirrorPodAnnotationKey: ""},
				OwnerReferences: []metav1.OwnerReference{owner("v1", "Node", true)},
			},
		}, class: mirrorPod},
		{name: "finished mirror pod", pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "abc"}},
			Status:     corev1.PodStatus{Phase: corev1.PodSucceeded},
		}, class: mirrorPod, unmanaged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.class, classify(&tt.pod), "class")
			assert.Equal(t, tt.unmanaged, unreplicatedFilter(&tt.pod), "unmanaged")
			assert.Equal(t, tt.localData, localStorageFilter(&tt.pod), "localData")
		})
	}
}

func TestToleratesCordon(t *testing.T) {
	pod := func(tols ...corev1.Toleration) *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{Tolerations: tols}}
	}
	exists := corev1.TolerationOpExists
	for _, tt := range []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"none", pod(), false},
		{"everything", pod(corev1.Toleration{Operator: exists}), true},
		{"unschedulable", pod(corev1.Toleration{Key: corev1.TaintNodeUnschedulable, Operator: exists, Effect: corev1.TaintEffectNoSchedule}), true},
		{"unschedulable, any effect", pod(corev1.Toleration{Key: corev1.TaintNodeUnschedulable, Operator: exists}), true},
		{"not-ready only", pod(corev1.Toleration{Key: corev1.TaintNodeNotReady, Operator: exists}), false},
		{"everything, NoExecute only", pod(corev1.Toleration{Operator: exists, Effect: corev1.TaintEffectNoExecute}), false},
		{"nil", nil, false},
	} {
		assert.Equal(t, tt.want, toleratesCordon(tt.pod), tt.name)
	}
}

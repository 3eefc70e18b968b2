package lock

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDecide(t *testing.T) {
	claiming := nodeLock{State: StateClaiming}
	holding := nodeLock{State: StateRebooting}
	for _, tc := range []struct {
		name           string
		slots          int
		others         map[string]nodeLock
		want           verdict
		holders, ahead []string
	}{
		{name: "alone", slots: 1, want: promote},
		{name: "holder takes the slot", slots: 1, others: map[string]nodeLock{"a": holding}, want: withdraw, holders: []string{"a"}},
		{name: "earlier claim wins", slots: 1, others: map[string]nodeLock{"a": claiming}, want: withdraw, ahead: []string{"a"}},
		{name: "later claim waits for us", slots: 1, others: map[string]nodeLock{"z": claiming}, want: awaitLater},
		{name: "two slots, one holder, later claim", slots: 2, others: map[string]nodeLock{"a": holding, "z": claiming}, want: awaitLater, holders: []string{"a"}},
		{name: "two slots, one holder", slots: 2, others: map[string]nodeLock{"z": holding}, want: promote, holders: []string{"z"}},
		{name: "three slots, two earlier claims, two later", slots: 3,
			others: map[string]nodeLock{"a": claiming, "b": claiming, "y": claiming, "z": claiming}, want: awaitLater, ahead: []string{"a", "b"}},
		{name: "three slots, three earlier", slots: 3,
			others: map[string]nodeLock{"a": claiming, "b": holding, "c": claiming}, want: withdraw, holders: []string{"b"}, ahead: []string{"a", "c"}},
		{name: "Ready nodes do not count", slots: 1, others: map[string]nodeLock{"a": {State: StateReady}}, want: promote},
		{name: "zero slots: nobody reboots", slots: 0, want: withdraw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, held := decide("m", "g", tc.slots, tc.others)
			assert.Equal(t, tc.want, v)
			assert.Equal(t, tc.holders, held.Holders)
			assert.Equal(t, tc.ahead, held.Ahead)
			assert.Equal(t, tc.slots, held.Slots)
		})
	}
}

func TestWritePatch(t *testing.T) {
	since := time.Date(2026, 11, 21, 10, 0, 0, 5, time.UTC)
	var got map[string]any
	require.NoError(t, json.Unmarshal(write{
		resourceVersion: "42", state: StateRebooting, group: "workers", since: since,
		bootID: "b00t", wasUnsched: new(false), unschedulable: new(true),
	}.patch(), &got))
	assert.Equal(t, map[string]any{
		"metadata": map[string]any{
			"resourceVersion": "42",
			"labels":          map[string]any{LabelLock: "true", LabelWaiting: nil},
			"annotations": map[string]any{
				AnnotationStatus: "Rebooting", AnnotationGroup: "workers",
				AnnotationSince: "2026-11-21T10:00:00.000000005Z", AnnotationBootID: "b00t",
				AnnotationWasUnschedulable: "false",
				// the promotion ends the wait
				AnnotationWaitingSince: nil, AnnotationLastRequest: nil, AnnotationRequestUntil: nil,
				AnnotationReservedUntil: nil,
			},
		},
		"spec": map[string]any{"unschedulable": true},
	}, got)

	got = nil
	require.NoError(t, json.Unmarshal(write{resourceVersion: "43", state: StateReady, since: since}.patch(), &got))
	md := got["metadata"].(map[string]any)
	assert.Equal(t, map[string]any{LabelLock: nil}, md["labels"], "release removes the label")
	ann := md["annotations"].(map[string]any)
	assert.Equal(t, "Ready", ann[AnnotationStatus])
	assert.Contains(t, ann, AnnotationBootID)
	assert.Nil(t, ann[AnnotationBootID], "boot ID removed")
	assert.NotContains(t, ann, AnnotationWasUnschedulable, "only the promotion and the release touch it")
	assert.NotContains(t, ann, AnnotationGroup, "Ready keeps the last group")
	assert.NotContains(t, ann, AnnotationReleased, "a withdrawal is no release")
	assert.NotContains(t, got, "spec", "no cordon change unless asked")

	got = nil
	require.NoError(t, json.Unmarshal(write{resourceVersion: "44", state: StateReady, group: "g", since: since, released: true}.patch(), &got))
	ann = got["metadata"].(map[string]any)["annotations"].(map[string]any)
	assert.Equal(t, "2026-11-21T10:00:00.000000005Z", ann[AnnotationReleased], "a release records its time")
	assert.Equal(t, "g", ann[AnnotationReleasedGroup], "and its slot's group")
	assert.NotContains(t, ann, AnnotationGroup, "Ready keeps the last group")
	assert.Contains(t, ann, AnnotationWasUnschedulable)
	assert.Nil(t, ann[AnnotationWasUnschedulable], "a release removes it")
	assert.Contains(t, ann, AnnotationReservedUntil)
	assert.Nil(t, ann[AnnotationReservedUntil], "a release ends a reservation")

	got = nil
	until := since.Add(7 * time.Minute)
	require.NoError(t, json.Unmarshal(write{resourceVersion: "45", state: StateRebooting, since: since,
		wasUnsched: new(false), reservedUntil: until}.patch(), &got))
	ann = got["metadata"].(map[string]any)["annotations"].(map[string]any)
	assert.Equal(t, "2026-11-21T10:07:00.000000005Z", ann[AnnotationReservedUntil], "a reservation's promotion")
	assert.Nil(t, ann[AnnotationWaitingSince])
}

func TestLockOf(t *testing.T) {
	node := func(a map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: a}}
	}
	assert.Equal(t, StateReady, lockOf(node(nil)).State)
	assert.Equal(t, StateReady, lockOf(node(map[string]string{AnnotationStatus: "Weird"})).State)
	st := lockOf(node(map[string]string{
		AnnotationStatus: "Rebooting", AnnotationGroup: "g", AnnotationWasUnschedulable: "false",
		AnnotationSince: "2026-11-21T10:00:00Z",
	}))
	assert.Equal(t, nodeLock{State: StateRebooting, Group: "g", Since: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)}, st)
	assert.True(t, lockOf(node(map[string]string{AnnotationStatus: "Rebooting"})).WasUnschedulable,
		"without a record that we cordoned, the release leaves the cordon")
}

func TestStripNode(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:          "n",
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			Annotations:   map[string]string{AnnotationStatus: "Rebooting", "csi.volume.kubernetes.io/nodeid": "{}"},
			Labels:        map[string]string{"zone": "a"},
		},
		Spec: corev1.NodeSpec{Unschedulable: true},
		Status: corev1.NodeStatus{
			Images: []corev1.ContainerImage{{Names: []string{"img"}, SizeBytes: 1}},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse},
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
			},
			NodeInfo: corev1.NodeSystemInfo{MachineID: "m", BootID: "b", KernelVersion: "6.1"},
		},
	}
	out, err := stripNode(n)
	require.NoError(t, err)
	s := out.(*corev1.Node)
	assert.Nil(t, s.ManagedFields)
	assert.Nil(t, s.Status.Images)
	assert.Equal(t, map[string]string{AnnotationStatus: "Rebooting"}, s.Annotations)
	assert.Equal(t, map[string]string{"zone": "a"}, s.Labels)
	assert.True(t, s.Spec.Unschedulable)
	assert.Equal(t, []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}, s.Status.Conditions)
	assert.Equal(t, corev1.NodeSystemInfo{MachineID: "m", BootID: "b"}, s.Status.NodeInfo)
}

package lock

import (
	"cmp"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The Node annotations and label that hold the lock. docs/annotations.md describes them
// for operators.
const (
	// AnnotationStatus is the node's lock state: Ready, Claiming or Rebooting. The key
	// and the values Ready and Rebooting are those of the original reboot manager.
	AnnotationStatus = "rebootmanager/status"
	// AnnotationGroup is the FleetLock group a claim or a hold counts against; a node in
	// state Ready keeps the group of its last claim or hold.
	AnnotationGroup = "rebootmanager/group"
	// AnnotationSince is when the current state began (RFC 3339).
	AnnotationSince = "rebootmanager/since"
	// AnnotationBootID is status.nodeInfo.bootID when the reboot was granted.
	AnnotationBootID = "rebootmanager/boot-id"
	// AnnotationWasUnschedulable is "true" when the node was already cordoned before we
	// cordoned it, so that the release leaves it cordoned; "false" when we cordoned it.
	AnnotationWasUnschedulable = "rebootmanager/was-unschedulable"
	// AnnotationZincatiID, set by an operator, is the ID Zincati sends for this node,
	// for nodes whose Zincati is configured with identity.node_uuid. Without it the ID
	// is derived from status.nodeInfo.machineID.
	AnnotationZincatiID = "rebootmanager/zincati-id"
	// AnnotationReleased is when the node last released a slot (RFC 3339); with
	// AnnotationReleasedGroup it tells a group's last reboot.
	AnnotationReleased = "rebootmanager/released"
	// AnnotationReleasedGroup is the group of the slot the node last released, written
	// with AnnotationReleased: AnnotationGroup may change since (the node waits in
	// another group). Absent (a release written before it existed): AnnotationGroup.
	AnnotationReleasedGroup = "rebootmanager/released-group"
	// AnnotationAutoscalerKeys lists, comma-separated, the autoscaler annotations
	// (AutoscalerAnnotations) that the promotion set because the node had none of its
	// own; the release removes exactly those, so an operator's own value stays.
	AnnotationAutoscalerKeys = "rebootmanager/autoscaler-annotations"
	// AnnotationHold, set by an operator (any value, best a reason), refuses the node's
	// pre-reboot with node_held; a current holder keeps its slot, and its release
	// leaves it cordoned.
	AnnotationHold = "rebootmanager/hold"
	// LabelLock is set to "true" on claiming and holding nodes, so that the check can
	// list exactly them with a label selector.
	LabelLock = "rebootmanager/lock"

	// AnnotationWaitingSince is when the node's current wait for a slot began: its
	// first pre-reboot request, since it last held or released, that was not answered
	// 2xx at once (RFC 3339). Written with LabelWaiting; both are removed by the
	// promotion, or once the waiter is stale (Waiter.Stale).
	AnnotationWaitingSince = "rebootmanager/waiting-since"
	// AnnotationLastRequest is when the waiting node's latest pre-reboot request
	// arrived, or ended if it has (RFC 3339).
	AnnotationLastRequest = "rebootmanager/last-request"
	// AnnotationRequestUntil is the deadline of the waiting node's pre-reboot request
	// held open now (RFC 3339); removed when that request answers. A replica that stops
	// mid-request leaves it behind; it is then past within Options.Wait.
	AnnotationRequestUntil = "rebootmanager/request-until"
	// AnnotationReservedUntil, on a holder, says that its slot was reserved for it
	// while it had no request open, and until when (RFC 3339): its drain starts at
	// once, and if the node's pre-reboot has not arrived by then, the slot is given
	// back and the node uncordoned (if we cordoned it). Its first pre-reboot removes it.
	AnnotationReservedUntil = "rebootmanager/reserved-until"
	// LabelWaiting is set to "true" on nodes that wait for a slot, so that a fresh
	// read can list exactly them with a label selector.
	LabelWaiting = "rebootmanager/waiting"
)

// State is a node's lock state.
type State string

// The lock states. A node without AnnotationStatus is Ready.
const (
	StateReady     State = "Ready"
	StateClaiming  State = "Claiming"
	StateRebooting State = "Rebooting"
)

// nodeLock is the lock state recorded on one node.
type nodeLock struct {
	State            State
	Group            string
	Since            time.Time
	BootID           string
	WasUnschedulable bool
	Released         time.Time // when the node last released a slot
	ReleasedGroup    string    // the group of that slot; "" if none was released
}

func lockOf(n *corev1.Node) nodeLock {
	a := n.Annotations
	l := nodeLock{State: State(a[AnnotationStatus]), Group: a[AnnotationGroup], BootID: a[AnnotationBootID]}
	if l.State != StateClaiming && l.State != StateRebooting {
		l.State = StateReady
	}
	l.Since, _ = time.Parse(time.RFC3339Nano, a[AnnotationSince])
	l.Released, _ = time.Parse(time.RFC3339Nano, a[AnnotationReleased])
	if !l.Released.IsZero() {
		l.ReleasedGroup = cmp.Or(a[AnnotationReleasedGroup], l.Group)
	}
	// Only a recorded "false" means we cordoned the node: when in doubt, leave it cordoned.
	l.WasUnschedulable = a[AnnotationWasUnschedulable] != "false"
	return l
}

// AutoscalerAnnotations are set to "true" on a node while it holds a slot, so that
// cluster-autoscaler and Karpenter do not remove a drained, rebooting node (it looks
// empty) instead of the one that took its pods (kured#707).
var AutoscalerAnnotations = []string{
	"cluster-autoscaler.kubernetes.io/scale-down-disabled",
	"karpenter.sh/do-not-disrupt",
}

// autoscalerKeysToSet returns the autoscaler annotations node has no value of.
func autoscalerKeysToSet(node *corev1.Node) []string {
	var keys []string
	for _, k := range AutoscalerAnnotations {
		if _, ok := node.Annotations[k]; !ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// autoscalerKeysSet returns the autoscaler annotations the promotion of node set.
func autoscalerKeysSet(node *corev1.Node) []string {
	var keys []string
	for k := range strings.SplitSeq(node.Annotations[AnnotationAutoscalerKeys], ",") {
		if slices.Contains(AutoscalerAnnotations, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// holding reports whether the node counts against its group's slots.
func (l nodeLock) holding() bool { return l.State == StateRebooting }

// writeOf builds a JSON merge patch that sets a node's lock state, conditioned on the
// node's resourceVersion: the API server answers 409 Conflict if the node changed
// since it was read.
type write struct {
	resourceVersion string
	state           State
	group           string
	since           time.Time
	bootID          string
	wasUnsched      *bool
	unschedulable   *bool
	released        bool // a release: record since as the release time
	// noReboot, on a release, says the hold never led to a reboot (a reservation
	// given back): the group's last reboot, AnnotationReleased, is left as it was.
	noReboot bool
	// setAutoscaler are autoscaler annotations to set to "true" (a promotion), and
	// dropAutoscaler those to remove (a release); both update AnnotationAutoscalerKeys.
	setAutoscaler, dropAutoscaler []string
	// reservedUntil, on a promotion, is the deadline of a reservation
	// (AnnotationReservedUntil); zero for a promotion on a request.
	reservedUntil time.Time
}

func (w write) patch() []byte {
	str := func(s string) any {
		if s == "" {
			return nil // null deletes the key
		}
		return s
	}
	var label any
	if w.state != StateReady {
		label = "true"
	}
	since := stamp(w.since)
	annotations := map[string]any{
		AnnotationStatus: string(w.state),
		AnnotationSince:  since,
		AnnotationBootID: str(w.bootID),
	}
	// Written by the promotion, removed by a release, kept by anything else: after a
	// release by hand (the status annotation overwritten) it still tells that the
	// cordon left on the node is ours.
	switch {
	case w.wasUnsched != nil:
		annotations[AnnotationWasUnschedulable] = strconv.FormatBool(*w.wasUnsched)
	case w.released:
		annotations[AnnotationWasUnschedulable] = nil
	}
	if w.state != StateReady {
		annotations[AnnotationGroup] = w.group // Ready keeps the last group
	}
	if w.released && !w.noReboot {
		annotations[AnnotationReleased] = since
		annotations[AnnotationReleasedGroup] = str(w.group) // the group of the hold
	}
	for _, k := range w.setAutoscaler {
		annotations[k] = "true"
	}
	if len(w.setAutoscaler) > 0 {
		annotations[AnnotationAutoscalerKeys] = strings.Join(w.setAutoscaler, ",")
	}
	for _, k := range w.dropAutoscaler {
		annotations[k] = nil
	}
	if w.released {
		annotations[AnnotationAutoscalerKeys] = nil
	}
	labels := map[string]any{LabelLock: label}
	if w.wasUnsched != nil || w.released {
		// A promotion ends the node's wait, in its own write; a release ends any
		// reservation, and leaves no mark behind.
		for _, k := range []string{AnnotationWaitingSince, AnnotationLastRequest, AnnotationRequestUntil, AnnotationReservedUntil} {
			annotations[k] = nil
		}
		labels[LabelWaiting] = nil
		if !w.reservedUntil.IsZero() {
			annotations[AnnotationReservedUntil] = w.reservedUntil.UTC().Format(time.RFC3339Nano)
		}
	}
	p := map[string]any{
		"metadata": map[string]any{
			"resourceVersion": w.resourceVersion,
			"labels":          labels,
			"annotations":     annotations,
		},
	}
	if w.unschedulable != nil {
		p["spec"] = map[string]any{"unschedulable": *w.unschedulable}
	}
	b, _ := json.Marshal(p) // maps of strings, bools and nils always marshal
	return b
}

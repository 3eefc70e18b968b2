package lock

import (
	"encoding/json"
	"strconv"
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
	// AnnotationGroup, which a release leaves in place, it tells a group's last reboot.
	AnnotationReleased = "rebootmanager/released"
	// AnnotationHold, set by an operator (any value, best a reason), refuses the node's
	// pre-reboot with node_held; a current holder keeps its slot, and its release
	// leaves it cordoned.
	AnnotationHold = "rebootmanager/hold"
	// LabelLock is set to "true" on claiming and holding nodes, so that the check can
	// list exactly them with a label selector.
	LabelLock = "rebootmanager/lock"
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
}

func lockOf(n *corev1.Node) nodeLock {
	a := n.Annotations
	l := nodeLock{State: State(a[AnnotationStatus]), Group: a[AnnotationGroup], BootID: a[AnnotationBootID]}
	if l.State != StateClaiming && l.State != StateRebooting {
		l.State = StateReady
	}
	l.Since, _ = time.Parse(time.RFC3339Nano, a[AnnotationSince])
	l.Released, _ = time.Parse(time.RFC3339Nano, a[AnnotationReleased])
	// Only a recorded "false" means we cordoned the node: when in doubt, leave it cordoned.
	l.WasUnschedulable = a[AnnotationWasUnschedulable] != "false"
	return l
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
	since := w.since.UTC().Format(time.RFC3339Nano)
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
	if w.released {
		annotations[AnnotationReleased] = since
	}
	p := map[string]any{
		"metadata": map[string]any{
			"resourceVersion": w.resourceVersion,
			"labels":          map[string]any{LabelLock: label},
			"annotations":     annotations,
		},
	}
	if w.unschedulable != nil {
		p["spec"] = map[string]any{"unschedulable": *w.unschedulable}
	}
	b, _ := json.Marshal(p) // maps of strings, bools and nils always marshal
	return b
}

package evict

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Phase is where a drain stands as a whole. A drain moves from Pending to Evicting
// (to Forcing under Force past Timeout), to WaitingForVolumes once its pods are gone
// (back to Evicting if pods arrive), and ends Drained, Failed or NodeGone; Forget
// stops it in any phase. It changes only in the drain's setPhase.
type Phase string

const (
	// PhasePending: started, waiting for Run (or for a forgotten drain of the same
	// node to stop).
	PhasePending Phase = "Pending"
	// PhaseEvicting: evicting the targets and waiting for them to be gone.
	PhaseEvicting Phase = "Evicting"
	// PhaseForcing: under FailurePolicy Force, past Timeout: deleting the targets
	// still refused, and waiting for them to be gone.
	PhaseForcing Phase = "Forcing"
	// PhaseWaitingForVolumes: the targets are gone; VolumeAttachments of the node are
	// still attached (Progress.VolumesAttached).
	PhaseWaitingForVolumes Phase = "WaitingForVolumes"
	// PhaseDrained: every target is gone, and no VolumeAttachment of the node is
	// attached. Final.
	PhaseDrained Phase = "Drained"
	// PhaseFailed: the drain gave up: under FailurePolicy Release past Timeout, or
	// under Release or Force past Timeout while pods keep returning
	// (BlockedByPodsReturning). Final.
	PhaseFailed Phase = "Failed"
	// PhaseNodeGone: the Node object drained (Progress.NodeUID) was deleted, or
	// replaced by another of the same name; the drain evicts nothing more. Final.
	PhaseNodeGone Phase = "NodeGone"
)

// ended reports whether the phase ends the drain: its Done is closed.
func (p Phase) ended() bool { return p == PhaseDrained || p == PhaseFailed || p == PhaseNodeGone }

// Progress is where one node's drain stands. It is a snapshot: call Drainer.Start or
// Drainer.Progress again for a newer one.
type Progress struct {
	// Node is the drained node's name.
	Node string
	// NodeUID is the UID of the Node object drained: the drain is bound to it.
	NodeUID types.UID
	// Phase is the drain's phase.
	Phase Phase
	// Started is when this drain began.
	Started time.Time
	// Drained is true once no pod that must leave is left on the node (Phase
	// PhaseDrained).
	Drained bool
	// Failed is true when the drain gave up: under FailurePolicy Release, its Timeout
	// passed before it finished (Phase PhaseFailed). No other policy sets it.
	Failed bool
	// PodsLeft is the number of pods still to leave the node.
	PodsLeft int
	// Blocks are the reasons the drain cannot go on now, one per pod (a refused
	// eviction, pods returning), sorted by Reason; empty while nothing blocks it.
	// A drain that waits only for pods to terminate is not blocked.
	Blocks []Block
	// BlockedBy names the PodDisruptionBudgets (namespace/name) that refused the last
	// evictions (the Objects of the BlockedByPDB Blocks); empty when none does.
	BlockedBy []string
	// BlockedSince is when the oldest of Blocks began; zero while nothing blocks.
	BlockedSince time.Time
	// Err is the last error met, if any (an eviction refused, an API error).
	Err error
	// Done is closed when the drain ends: drained, failed, node gone, or stopped by
	// Forget. It is never nil.
	Done <-chan struct{}

	// Pods is how many pods the drain must move: those bound to the node when it
	// started, less mirror pods, DaemonSet pods and finished pods, which stay.
	Pods int
	// Unmanaged counts those pods that no controller owns: evicted, they are gone
	// for good.
	Unmanaged int
	// LocalData counts those pods that have emptyDir volumes, whose data is lost.
	LocalData int
	// Forced counts the pods deleted without eviction (FailurePolicy Force).
	Forced int
	// Left names the pods still to leave (namespace/name), sorted.
	Left []string
	// GaveUpBefore is set on the final Progress of a drain that gave up, as Start
	// and GaveUp return it while nothing has changed: the node is not drained again
	// (see Drainer.GaveUp).
	GaveUpBefore bool
	// VolumesAttached names the node's VolumeAttachments still attached once its
	// pods are gone (Phase PhaseWaitingForVolumes), sorted.
	VolumesAttached []string

	leftUIDs []types.UID // the UIDs of Left
}

// Blocked returns the oldest reason the drain cannot go on, if any: what a reply
// that says "blocked" names (its Message is the refusal's own, Pod the pod).
func (p Progress) Blocked() (Block, bool) {
	if len(p.Blocks) == 0 {
		return Block{}, false
	}
	oldest := p.Blocks[0]
	for _, b := range p.Blocks[1:] {
		if b.Since.Before(oldest.Since) {
			oldest = b
		}
	}
	return oldest, true
}

// String describes the progress for a person: "3 pods left, blocked by PDB ns/web".
func (p Progress) String() string {
	switch {
	case p.Drained:
		return "drained"
	case p.Failed:
		return fmt.Sprintf("drain failed with %d pods left: %v", p.PodsLeft, p.Err)
	case p.Phase == PhaseNodeGone:
		return fmt.Sprintf("drain stopped: node %s (UID %s) is gone", p.Node, p.NodeUID)
	case len(p.BlockedBy) > 0:
		return fmt.Sprintf("%d pods left, evictions blocked by PodDisruptionBudget %s", p.PodsLeft, strings.Join(p.BlockedBy, ", "))
	case len(p.Blocks) > 0:
		b, _ := p.Blocked()
		return fmt.Sprintf("%d pods left, blocked by %s", p.PodsLeft, b)
	case p.Phase == PhaseWaitingForVolumes:
		return fmt.Sprintf("pods gone, waiting for %d volumes to detach: %s", len(p.VolumesAttached), strings.Join(p.VolumesAttached, ", "))
	default:
		return fmt.Sprintf("draining, %d pods left", p.PodsLeft)
	}
}

// snapshot is the drain's progress as its run loop knows it.
func (dr *drain) snapshot() Progress {
	p := Progress{
		Node:    dr.node,
		NodeUID: dr.uid,
		Phase:   dr.phase,
		Started: dr.started,
		Done:    dr.done,
		Pods:    len(dr.targets),
		Forced:  dr.forced,
		Err:     dr.listErr,
		Drained: dr.phase == PhaseDrained,
		Failed:  dr.phase == PhaseFailed,
	}
	var errAt time.Time
	for _, t := range dr.targets {
		if t.unreplicated {
			p.Unmanaged++
		}
		if t.localStorage {
			p.LocalData++
		}
		if t.phase == podGone {
			continue
		}
		p.PodsLeft++
		p.Left = append(p.Left, t.key)
		if t.err != nil && t.errAt.After(errAt) {
			p.Err, errAt = t.err, t.errAt
		}
	}
	p.Blocks = dr.blocks()
	p.leftUIDs = dr.leftUIDsOf()
	if dr.phase != PhaseDrained {
		p.VolumesAttached = dr.attached
	}
	budgets := map[string]bool{}
	for _, b := range p.Blocks {
		if b.Reason == BlockedByPDB && !budgets[b.Object] {
			budgets[b.Object] = true
			p.BlockedBy = append(p.BlockedBy, b.Object)
		}
		if p.BlockedSince.IsZero() || b.Since.Before(p.BlockedSince) {
			p.BlockedSince = b.Since
		}
	}
	sort.Strings(p.BlockedBy)
	if p.Failed {
		p.Err = dr.timeoutErr(p)
	}
	return p
}

// timeoutErr is the Err of a drain that gave up.
func (dr *drain) timeoutErr(p Progress) error {
	if p.PodsLeft == 0 && len(p.VolumesAttached) > 0 {
		return fmt.Errorf("%w: volumes still attached %s after the pods left: %s", ErrTimeout, dr.d.opts.VolumeDetachTimeout, strings.Join(p.VolumesAttached, ", "))
	}
	if p.Err != nil {
		return fmt.Errorf("%w after %s with %d pods left; last error: %w", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft, p.Err)
	}
	return fmt.Errorf("%w after %s with %d pods left", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft)
}

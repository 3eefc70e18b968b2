package evict

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Phase is where a drain stands as a whole. A drain moves from Pending to Evicting,
// possibly to Forcing, and ends Drained or Failed; Forget stops it in any phase.
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
	// PhaseDrained: every target is gone. Final.
	PhaseDrained Phase = "Drained"
	// PhaseFailed: the drain gave up (FailurePolicy Release). Final.
	PhaseFailed Phase = "Failed"
)

// ended reports whether the phase ends the drain: its Done is closed.
func (p Phase) ended() bool { return p == PhaseDrained || p == PhaseFailed }

// Progress is where one node's drain stands. It is a snapshot: call Drainer.Start or
// Drainer.Progress again for a newer one.
type Progress struct {
	// Node is the drained node's name.
	Node string
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
	// BlockedBy names the PodDisruptionBudgets (namespace/name) that refused the last
	// evictions; empty when nothing blocks.
	BlockedBy []string
	// BlockedSince is when a budget began to refuse the evictions; zero while none does.
	BlockedSince time.Time
	// Err is the last error met, if any (an eviction refused, an API error).
	Err error
	// Done is closed when the drain ends, drained or failed (or stopped by Forget).
	// It is never nil.
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
}

// String describes the progress for a person: "3 pods left, blocked by PDB ns/web".
func (p Progress) String() string {
	switch {
	case p.Drained:
		return "drained"
	case p.Failed:
		return fmt.Sprintf("drain failed with %d pods left: %v", p.PodsLeft, p.Err)
	case len(p.BlockedBy) > 0:
		return fmt.Sprintf("%d pods left, evictions blocked by PodDisruptionBudget %s", p.PodsLeft, strings.Join(p.BlockedBy, ", "))
	default:
		return fmt.Sprintf("draining, %d pods left", p.PodsLeft)
	}
}

// snapshot is the drain's progress as its run loop knows it.
func (dr *drain) snapshot() Progress {
	p := Progress{
		Node:    dr.node,
		Phase:   dr.phase,
		Started: dr.started,
		Done:    dr.done,
		Pods:    len(dr.targets),
		Forced:  dr.forced,
		Err:     dr.listErr,
		Drained: dr.phase == PhaseDrained,
		Failed:  dr.phase == PhaseFailed,
	}
	budgets := map[string]bool{}
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
		for _, b := range t.blockedBy {
			budgets[b] = true
		}
		if t.err != nil && t.errAt.After(errAt) {
			p.Err, errAt = t.err, t.errAt
		}
	}
	for b := range budgets {
		p.BlockedBy = append(p.BlockedBy, b)
	}
	sort.Strings(p.BlockedBy)
	switch {
	case len(p.BlockedBy) == 0:
		dr.blockedSince = time.Time{}
	case dr.blockedSince.IsZero():
		dr.blockedSince = dr.d.opts.Clock.Now()
	}
	p.BlockedSince = dr.blockedSince
	if p.Failed {
		p.Err = dr.timeoutErr(p)
	}
	return p
}

// timeoutErr is the Err of a drain that gave up.
func (dr *drain) timeoutErr(p Progress) error {
	if p.Err != nil {
		return fmt.Errorf("%w after %s with %d pods left; last error: %w", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft, p.Err)
	}
	return fmt.Errorf("%w after %s with %d pods left", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft)
}

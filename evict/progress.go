package evict

import (
	"fmt"
	"strings"
	"time"
)

// Progress is where one node's drain stands. It is a snapshot: call Drainer.Start or
// Drainer.Progress again for a newer one.
type Progress struct {
	// Node is the drained node's name.
	Node string
	// Started is when this drain began.
	Started time.Time
	// Drained is true once no pod that must leave is left on the node.
	Drained bool
	// Failed is true when the drain gave up: under FailurePolicy Release, its Timeout
	// passed before it finished. No other policy sets it.
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

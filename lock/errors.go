package lock

import (
	"fmt"
	"strings"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// HeldError is returned when every slot of the group is taken. Holders are the nodes
// rebooting in the group; Ahead the nodes whose claims come first.
type HeldError struct {
	Group   string
	Slots   int
	Holders []string
	Ahead   []string
}

func (e *HeldError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "group %q: all %d reboot slots taken", e.Group, e.Slots)
	if len(e.Holders) > 0 {
		fmt.Fprintf(&b, "; rebooting: %s", strings.Join(e.Holders, ", "))
	}
	if len(e.Ahead) > 0 {
		fmt.Fprintf(&b, "; claimed first: %s", strings.Join(e.Ahead, ", "))
	}
	return b.String()
}

// Is makes errors.Is(err, fleetlock.ErrLockHeld) true.
func (e *HeldError) Is(target error) bool { return target == fleetlock.ErrLockHeld }

// DrainError is returned to a holder whose node is not drained yet.
type DrainError struct {
	Progress evict.Progress
}

func (e *DrainError) Error() string {
	return fmt.Sprintf("node %s: %s", e.Progress.Node, e.Progress)
}

// Is matches fleetlock.ErrDrainBlocked when something blocks the drain (a
// PodDisruptionBudget, an admission policy, a terminating namespace, missing RBAC, pods
// that keep returning, volumes still attached: Progress.Blocks), it failed or gave up,
// fleetlock.ErrDrainInProgress otherwise.
func (e *DrainError) Is(target error) bool {
	p := e.Progress
	if len(p.BlockedBy) > 0 || len(p.Blocks) > 0 || p.Failed || p.GaveUpBefore {
		return target == fleetlock.ErrDrainBlocked
	}
	return target == fleetlock.ErrDrainInProgress
}

// APIError is an API-server failure that made the lock give up on a request; nothing
// was granted. It matches fleetlock.ErrUnavailable.
type APIError struct {
	Op  string
	Err error
}

func (e *APIError) Error() string             { return e.Op + ": " + e.Err.Error() }
func (e *APIError) Unwrap() error             { return e.Err }
func (e *APIError) Is(target error) bool      { return target == fleetlock.ErrUnavailable }
func apiError(op string, err error) *APIError { return &APIError{Op: op, Err: err} }

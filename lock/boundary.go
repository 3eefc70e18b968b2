package lock

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Policy is what the lock asks of the operator's policy. Every method answers from
// memory without blocking, and is called on every decision, so a reloaded policy takes
// effect at once. *policy.Policy implements it; NoPolicy is the policy of a lock with
// none configured.
type Policy interface {
	// Slots returns how many nodes of group may hold a slot at once (0 or more).
	Slots(group string) int
	// Groups returns the configured groups, "default" included: the metrics show
	// each of them from the start, and label counters with no other group.
	Groups() []string
	// Admit returns nil if the candidate, which holds nothing, may take a slot now,
	// else a *Refusal that says why.
	Admit(c Candidate) error
	// StaleHolderAfter is how long a holder that rebooted (new boot ID) and is Ready
	// may go without calling steady-state before it is released; 0 turns that off.
	StaleHolderAfter() time.Duration
	// After returns the groups that group goes after: its nodes are not granted a
	// slot while a node of any of them holds, claims or waits (OrderBlockers). Nil:
	// none.
	After(group string) []string
}

// NoPolicy is the Policy of a lock with no policy configured: one slot per group,
// every candidate admitted, stale holders kept.
type NoPolicy struct{}

// Slots returns 1 for every group.
func (NoPolicy) Slots(string) int { return 1 }

// Groups returns "default".
func (NoPolicy) Groups() []string { return []string{"default"} }

// Admit admits every candidate.
func (NoPolicy) Admit(Candidate) error { return nil }

// StaleHolderAfter returns 0 (off).
func (NoPolicy) StaleHolderAfter() time.Duration { return 0 }

// After returns nil: no group goes after another.
func (NoPolicy) After(string) []string { return nil }

var _ Policy = NoPolicy{}

// FixedSlots is the Policy of a lock with n slots for every group and nothing else:
// every candidate admitted, stale holders kept.
type FixedSlots int

// Slots returns n.
func (n FixedSlots) Slots(string) int { return int(n) }

// Groups returns "default".
func (FixedSlots) Groups() []string { return []string{"default"} }

// Admit admits every candidate.
func (FixedSlots) Admit(Candidate) error { return nil }

// StaleHolderAfter returns 0 (off).
func (FixedSlots) StaleHolderAfter() time.Duration { return 0 }

// After returns nil: no group goes after another.
func (FixedSlots) After(string) []string { return nil }

var _ Policy = FixedSlots(1)

// Grant identifies one hold of a slot: one Node object and one promotion. Nothing
// recorded for an earlier grant, or for an earlier Node object of the same name, counts
// for a later one.
type Grant struct {
	// Node is the Node's name.
	Node string
	// UID is the UID of the Node object that was promoted.
	UID types.UID
	// Group is the FleetLock group the slot belongs to.
	Group string
	// Promoted is when the slot was taken (the rebootmanager/since annotation written
	// with the promotion), on the promoting replica's clock.
	Promoted time.Time
	// BootID is the node's boot ID as recorded at the promotion, or recorded anew
	// just before the 2xx if the node rebooted since (status.nodeInfo.bootID); empty
	// if the kubelet reported none.
	BootID string
}

// GrantHooks observe the life of a grant. *replace.Replacer implements them;
// NoGrantHooks does nothing. They run on the request's goroutine and must return
// promptly.
type GrantHooks interface {
	// Granted runs once a node has been promoted to a slot, before its drain starts.
	Granted(ctx context.Context, g Grant)
	// ToldToReboot runs just before a 2xx to pre-reboot, with the Node as read from
	// the API server for that 2xx; at is the moment on this replica's clock and
	// node.Status.NodeInfo.BootID the boot ID at that moment. An error refuses the
	// 2xx (api_unavailable) and Zincati asks again.
	ToldToReboot(ctx context.Context, node *corev1.Node, g Grant, at time.Time) error
	// Released runs after the slot of g was given back (steady-state, a stale holder,
	// an operator's release, the Node deleted).
	Released(ctx context.Context, g Grant)
}

// NoGrantHooks does nothing around grants.
type NoGrantHooks struct{}

// Granted does nothing.
func (NoGrantHooks) Granted(context.Context, Grant) {}

// ToldToReboot does nothing and returns nil.
func (NoGrantHooks) ToldToReboot(context.Context, *corev1.Node, Grant, time.Time) error {
	return nil
}

// Released does nothing.
func (NoGrantHooks) Released(context.Context, Grant) {}

var _ GrantHooks = NoGrantHooks{}

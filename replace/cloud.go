package replace

import (
	"context"
	"errors"
)

// Cloud is what replacing a node needs from its cloud: an instance group that keeps
// its capacity and launches a new instance when one is terminated.
type Cloud interface {
	// Name names the cloud in logs, Events and metrics, such as "aws".
	Name() string
	// Resolve maps a node's spec.providerID to its instance and group. A node that is
	// not this cloud's, or whose instance belongs to no group, is ErrNotManaged: it is
	// never touched.
	Resolve(ctx context.Context, providerID string) (Instance, error)
	// Preflight checks, changing nothing, that the instance may be replaced now (the
	// group opted in, the instance in service, the group able to launch). A guard that
	// refuses is a *GuardError; any other error is the cloud's.
	Preflight(ctx context.Context, in Instance) error
	// Replace terminates the instance and keeps the group's capacity, so that the group
	// launches a new one, in one call to the cloud: it never asks again by itself, as
	// the node may have come back in between. An instance already gone is done: nil.
	// An error wrapping ErrTryAgain is the cloud's "not now" (throttling, contention,
	// 5xx, a broken connection): the caller reads the node again before asking again.
	Replace(ctx context.Context, in Instance) error
	// InService returns the IDs of the group's instances in service.
	InService(ctx context.Context, in Instance) ([]string, error)
	// InstanceID returns the instance ID in a provider ID; ok is false when the
	// provider ID is not this cloud's.
	InstanceID(providerID string) (id string, ok bool)
}

// Instance is a node's cloud instance and the group that owns it.
type Instance struct {
	ID    string `json:"id"`
	Zone  string `json:"zone,omitempty"`
	Group string `json:"group"`
}

// ErrNotManaged is returned by Resolve for a node reboot-manager must never replace.
var ErrNotManaged = errors.New("not an instance of a supported group")

// ErrTryAgain is wrapped by Replace's errors that may pass if asked again later.
var ErrTryAgain = errors.New("the cloud said not now")

// GuardError is a Preflight guard's refusal.
type GuardError struct {
	// Guard names the guard, in CamelCase: NotOptedIn, LaunchSuspended, NotInGroup,
	// NotInService. Events carry it in their reason (Replacement<Guard>).
	Guard string
	// Msg says why.
	Msg string
}

func (e *GuardError) Error() string { return e.Msg }

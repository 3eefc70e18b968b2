package replace

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/lock"
)

var _ lock.GrantHooks = (*Replacer)(nil)

// Granted does nothing: the grant is recorded when the node is told to reboot.
func (r *Replacer) Granted(context.Context, lock.Grant) {}

// ToldToReboot records the grant before the node reboots (BeforeReboot).
func (r *Replacer) ToldToReboot(ctx context.Context, n *corev1.Node, g lock.Grant, _ time.Time) error {
	return r.BeforeReboot(ctx, n, g.Group)
}

// Released does nothing: the replacer follows the node's lock state itself.
func (r *Replacer) Released(context.Context, lock.Grant) {}

package replace

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/lock"
)

var _ lock.GrantHooks = (*Replacer)(nil)

// Granted implements lock.GrantHooks. A promotion alone records nothing: only the
// 2xx (ToldToReboot) starts what "failed to return" is measured from.
func (r *Replacer) Granted(context.Context, lock.Grant) {}

// ToldToReboot implements lock.GrantHooks: it records the grant of a node whose group
// replaces failed nodes, with at (this replica's clock) and the node's boot ID now,
// before the 2xx. A node that is not an instance of a supported group is not recorded
// (it is never replaced). A Replacing, Replaced or Failed record of the node is kept,
// and the new grant not recorded: the breaker keeps its count, a replacement in
// flight its state. A cloud that cannot say the instance group now is asked again when
// the node fails. Only a failure to read or write the record refuses the 2xx.
func (r *Replacer) ToldToReboot(ctx context.Context, n *corev1.Node, g lock.Grant, at time.Time) error {
	if r.opts.Config().Group(g.Group).ReplaceAfter.Duration == 0 {
		return nil
	}
	rec := record{Node: n.Name, UID: n.UID, Group: g.Group, ProviderID: n.Spec.ProviderID, Promoted: g.Promoted,
		ToldAt: at, BootID: n.Status.NodeInfo.BootID, State: StateGranted}
	cms := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace)
	var old *corev1.ConfigMap // a Granted record of an earlier grant or 2xx, overwritten
	cm, err := cms.Get(ctx, recordName(n.Name), metav1.GetOptions{})
	switch {
	case err == nil:
		prev, perr := decode(cm)
		if perr == nil && prev.State != StateGranted {
			r.log.Warn("grant not recorded for replacement: an earlier replacement record of the node is kept",
				"node", n.Name, "state", prev.State, "instance", prev.Instance.ID)
			return nil
		}
		if perr == nil && prev.UID == rec.UID && prev.ProviderID == rec.ProviderID {
			rec.Instance = prev.Instance // a 2xx again: the latest counts
		}
		old = cm
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("read replacement record: %w", err)
	}
	if rec.Instance.Group == "" {
		if ok := r.resolve(ctx, &rec); !ok {
			return nil
		}
	}
	if old != nil {
		rec.cm = old
		if err := r.update(ctx, &rec); err != nil {
			return fmt.Errorf("write replacement record: %w", err)
		}
		return nil
	}
	cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: recordName(n.Name), Namespace: r.opts.Namespace,
		Labels: map[string]string{LabelRecord: "true", "app.kubernetes.io/name": "reboot-manager"},
	}}
	if err := encode(cm, rec); err != nil {
		return err
	}
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("write replacement record: %w", err)
	}
	r.log.Info("grant recorded for replacement", "node", n.Name, "instance", rec.Instance.ID,
		"instanceGroup", rec.Instance.Group, "bootID", rec.BootID)
	return nil
}

// resolve fills rec's instance (and its group when the cloud says it); false when the
// node is never to be replaced.
func (r *Replacer) resolve(ctx context.Context, rec *record) bool {
	id, ok := r.opts.Cloud.InstanceID(rec.ProviderID)
	if !ok {
		r.log.Debug("not recorded for replacement: not this cloud's node", "node", rec.Node, "providerID", rec.ProviderID)
		return false
	}
	rec.Instance = Instance{ID: id}
	in, err := r.opts.Cloud.Resolve(ctx, rec.ProviderID)
	switch {
	case errors.Is(err, ErrNotManaged):
		r.log.Info("not recorded for replacement: its instance is in no instance group", "node", rec.Node, "err", err)
		return false
	case err != nil:
		r.log.Warn("instance group unknown at grant; asked again if the node fails", "node", rec.Node, "err", err)
	default:
		rec.Instance = in
	}
	return true
}

// Released implements lock.GrantHooks: the Granted record of g goes (a Replacing,
// Replaced or Failed one stays). Best effort: Reconcile forgets it too.
func (r *Replacer) Released(ctx context.Context, g lock.Grant) {
	cm, err := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace).Get(ctx, recordName(g.Node), metav1.GetOptions{})
	if err != nil {
		return
	}
	rec, err := decode(cm)
	if err != nil || rec.State != StateGranted || rec.UID != g.UID || !rec.Promoted.Equal(g.Promoted) {
		return
	}
	if err := r.forget(ctx, &rec); err != nil {
		r.log.Debug("replacement record of a released grant not deleted; Reconcile will", "node", g.Node, "err", err)
	}
}

package replace

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/lock"
)

// Evidence that a node failed to return is what this replica observed about this
// reboot, on its own clock: for replaceAfter after the 2xx, continuously, the boot ID
// the 2xx saw and a silent kubelet (its Lease in kube-node-lease not renewed, or the
// Node gone). A renewal is a change of the Lease's renewTime value seen between two
// looks; its timestamp, written by another clock, is never compared with ours. The
// Ready condition and its lastTransitionTime decide nothing.

// watch is what this replica saw of one record's kubelet.
type watch struct {
	grant  string    // the record's UID and 2xx: a new grant starts a new watch
	renew  string    // the Lease's renewTime last seen ("" none)
	alive  time.Time // when this replica last saw the kubelet alive, or began to look
	looked time.Time // the last look
}

// look is one fresh read of a record's Node and Lease.
type look struct {
	node  *corev1.Node // nil: this grant's Node is gone
	lease *metav1.MicroTime
	// back says why the node is not failed (it came back, or its grant ended), or "".
	back string
	// released: the grant no longer holds its slot (the record can go).
	released bool
}

// read reads rec's Node, its Lease and the lock annotation now. An error is the API
// server's: nothing may be decided.
func (r *Replacer) read(ctx context.Context, rec *record) (look, error) {
	var l look
	if id, ok := r.opts.Cloud.InstanceID(rec.ProviderID); !ok || id != rec.Instance.ID {
		// An edited or broken record: its instance is not its Node's. Never acted on.
		l.back = "the record's instance " + rec.Instance.ID + " is not its provider ID's (" + rec.ProviderID + ")"
		return l, nil
	}
	node, err := r.opts.Client.CoreV1().Nodes().Get(ctx, rec.Node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return l, r.apiDown(fmt.Errorf("read node: %w", err))
	case node.UID != rec.UID:
		if node.Spec.ProviderID == rec.ProviderID {
			l.back = "its instance registered a new Node " + string(node.UID)
		}
		// Another Node of the same name, another instance: this grant's Node is gone.
	default:
		l.node = node
		h, holds := lock.HolderOf(node)
		switch {
		case !holds || h.State != lock.StateRebooting || !h.Since.Equal(rec.Promoted):
			l.back, l.released = "its grant was released", true
		case node.Spec.ProviderID != rec.ProviderID:
			l.back = "its provider ID is " + node.Spec.ProviderID + ", not the recorded instance's"
		case node.Status.NodeInfo.BootID != rec.BootID:
			l.back = "it is back: boot ID " + node.Status.NodeInfo.BootID + ", not " + rec.BootID
		}
	}
	lease, err := r.opts.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, rec.Node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return l, r.apiDown(fmt.Errorf("read node lease: %w", err))
	case ownedBy(lease, rec):
		l.lease = lease.Spec.RenewTime
	}
	return l, nil
}

// ownedBy reports whether lease is the kubelet's of rec's Node object (or says
// nothing of its owner: then it counts, failing closed).
func ownedBy(lease *coordinationv1.Lease, rec *record) bool {
	for _, o := range lease.OwnerReferences {
		if o.Kind == "Node" {
			return o.UID == rec.UID
		}
	}
	return true
}

func renewString(t *metav1.MicroTime) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// silentFor returns how long, on this replica's clock, rec's kubelet has been seen
// silent with l the look just taken: since the later of the 2xx, the first look of
// this replica, the last renewal it saw, and the last API outage it saw.
func (r *Replacer) silentFor(rec *record, l look, now time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := string(rec.UID) + "@" + rec.ToldAt.Format(time.RFC3339Nano)
	renew := renewString(l.lease)
	w, ok := r.watches[rec.Node]
	gap := 3 * r.opts.Config().Replacement.Interval.Duration
	if !ok || w.grant != key || w.renew != renew || now.Sub(w.looked) > gap || w.looked.Before(r.downAt) {
		// First look, a renewal, or looks too far apart to call it continuous.
		w = watch{grant: key, renew: renew, alive: now}
	}
	w.looked = now
	r.watches[rec.Node] = w
	since := w.alive
	if rec.ToldAt.After(since) {
		since = rec.ToldAt
	}
	return now.Sub(since)
}

// apiDown notes an API server failure: every watch starts again after it, and
// nothing is replaced for Options.APIGrace after the API server answers again.
func (r *Replacer) apiDown(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return err
	}
	r.mu.Lock()
	r.downAt = r.opts.Now()
	r.mu.Unlock()
	return err
}

// paused reports whether an API outage was seen less than Options.APIGrace ago.
func (r *Replacer) paused(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.downAt.IsZero() && now.Sub(r.downAt) < r.opts.APIGrace
}

// errStop is a fresh read's refusal of an irreversible act.
type errStop struct{ why string }

func (e *errStop) Error() string { return "stopped: " + e.why }

// stillFailed reads rec's Node, its Lease and the lock again, just before an
// irreversible act, and returns an *errStop when the node came back (a new boot ID, a
// renewal of its Lease since the claim), was released, or is not the recorded
// instance any more; any other error is the API server's.
func (r *Replacer) stillFailed(ctx context.Context, rec *record) (look, error) {
	l, err := r.read(ctx, rec)
	switch {
	case err != nil:
		return l, err
	case l.back != "":
		return l, &errStop{l.back}
	case renewString(l.lease) != renewString(rec.LeaseRenewTime) && l.lease != nil:
		return l, &errStop{"its kubelet renewed its Lease since the replacement was claimed"}
	}
	other, err := r.otherNode(ctx, rec)
	switch {
	case err != nil:
		return l, err
	case other != "":
		return l, &errStop{"its instance is Node " + other + " now"}
	}
	return l, nil
}

// otherNode returns the name of a Node object other than rec's whose provider ID is
// rec's instance ("" if none): the instance came back under another name (a hostname
// from DHCP), and the old Node, silent, says nothing about it. It lists the Nodes
// (a consistent read); an error is the API server's.
func (r *Replacer) otherNode(ctx context.Context, rec *record) (string, error) {
	nodes, err := r.opts.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", r.apiDown(fmt.Errorf("list nodes: %w", err))
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if n.UID == rec.UID {
			continue
		}
		if id, ok := r.opts.Cloud.InstanceID(n.Spec.ProviderID); n.Spec.ProviderID == rec.ProviderID || ok && id == rec.Instance.ID {
			return n.Name, nil
		}
	}
	return "", nil
}

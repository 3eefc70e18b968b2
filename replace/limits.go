package replace

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// The limits on replacements in flight (one per instance group, MaxInFlight in all)
// are a lock, not a count from one replica's list: one coordination.k8s.io Lease,
// LeaseInFlight in the records' namespace, lists the replacements in flight, and only
// a write conditioned on its resourceVersion adds one. A replica terminates an
// instance only while its claim is listed there.
//
// An entry is valid while its record is Replacing with the same claim. A replica that
// adds an entry has written that record first, and one that drops another's entry
// reads the records after the Lease (and writes conditioned on the Lease as read), so
// a valid entry is never dropped; an entry left by a replica that died, or whose
// replacement ended, is dropped by the next replica that adds one. A Replacing record
// whose instance was asked to terminate counts as in flight even without its entry
// (the Lease deleted or edited), and gets it back at the next write.

// LeaseInFlight is the Lease that lists the replacements in flight.
const LeaseInFlight = "reboot-manager-replacements"

// annotationInFlight holds the entries: JSON, node name → inFlight.
const annotationInFlight = "rebootmanager/in-flight"

type inFlight struct {
	Group string `json:"group"` // the instance group
	Claim string `json:"claim"`
}

func entriesOf(l *coordinationv1.Lease) (map[string]inFlight, error) {
	m := map[string]inFlight{}
	if v := l.Annotations[annotationInFlight]; v != "" {
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("lease %s: annotation %s: %w", l.Name, annotationInFlight, err)
		}
	}
	return m, nil
}

func (r *Replacer) readInFlight(ctx context.Context) (*coordinationv1.Lease, map[string]inFlight, error) {
	l, err := r.opts.Client.CoordinationV1().Leases(r.opts.Namespace).Get(ctx, LeaseInFlight, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseInFlight, Namespace: r.opts.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "reboot-manager"}}}
	} else if err != nil {
		return nil, nil, r.apiDown(fmt.Errorf("read lease %s: %w", LeaseInFlight, err))
	}
	m, err := entriesOf(l)
	return l, m, err
}

// admitted returns "" if rec may take its place in flight now (read-only), else why not.
func (r *Replacer) admitted(ctx context.Context, rec *record) (string, error) {
	_, m, err := r.readInFlight(ctx)
	if err != nil {
		return "", err
	}
	if err := r.prune(ctx, m); err != nil {
		return "", err
	}
	return r.room(m, rec), nil
}

// room says why rec cannot be added to m, or "".
func (r *Replacer) room(m map[string]inFlight, rec *record) string {
	if e, ok := m[rec.Node]; ok && e.Claim == rec.Claim {
		return ""
	}
	max := r.opts.Config().Replacement.MaxInFlight
	n := 0
	for node, e := range m {
		if node == rec.Node {
			continue
		}
		if e.Group == rec.Instance.Group {
			return "a replacement in instance group " + e.Group + " is in flight (" + node + ")"
		}
		n++
	}
	if n >= max {
		return fmt.Sprintf("%d replacements in flight (replacement.maxInFlight %d)", n, max)
	}
	return ""
}

// prune drops from m the entries whose record is not Replacing with that claim,
// reading the records now (after the Lease), and adds the Replacing records whose
// instance was asked to terminate (attempts): their entries were lost with the Lease
// (deleted, or edited), and their groups are still launching.
func (r *Replacer) prune(ctx context.Context, m map[string]inFlight) error {
	recs, _, err := listRecords(ctx, r.opts.Client, r.opts.Namespace)
	if err != nil {
		return r.apiDown(err)
	}
	valid := map[string]string{}
	for _, rec := range recs {
		if rec.State == StateReplacing && rec.Claim != "" {
			valid[rec.Node] = rec.Claim
			if e, ok := m[rec.Node]; (!ok || e.Claim != rec.Claim) && rec.Attempts > 0 {
				m[rec.Node] = inFlight{Group: rec.Instance.Group, Claim: rec.Claim}
			}
		}
	}
	maps.DeleteFunc(m, func(node string, e inFlight) bool { return valid[node] != e.Claim })
	return nil
}

// acquire adds rec's claim to the Lease, conditioned on it as read; it returns why
// not when the limits leave no room. A 409 is returned as is: another replica wrote
// first, and the next look tries again.
func (r *Replacer) acquire(ctx context.Context, rec *record) (string, error) {
	l, m, err := r.readInFlight(ctx)
	if err != nil {
		return "", err
	}
	if e, ok := m[rec.Node]; ok && e.Claim == rec.Claim {
		return "", nil
	}
	if err := r.prune(ctx, m); err != nil {
		return "", err
	}
	if why := r.room(m, rec); why != "" {
		return why, nil
	}
	m[rec.Node] = inFlight{Group: rec.Instance.Group, Claim: rec.Claim}
	return "", r.writeInFlight(ctx, l, m)
}

func (r *Replacer) writeInFlight(ctx context.Context, l *coordinationv1.Lease, m map[string]inFlight) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	l = l.DeepCopy()
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[annotationInFlight] = string(b)
	now := metav1.NewMicroTime(r.opts.Now())
	l.Spec.HolderIdentity, l.Spec.RenewTime = &r.opts.Identity, &now
	if l.ResourceVersion == "" {
		_, err = r.opts.Client.CoordinationV1().Leases(r.opts.Namespace).Create(ctx, l, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return apierrors.NewConflict(coordinationv1.Resource("leases"), l.Name, err)
		}
		return err
	}
	_, err = r.opts.Client.CoordinationV1().Leases(r.opts.Namespace).Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// release drops rec's claim from the Lease (best effort: a stale entry is pruned).
func (r *Replacer) release(ctx context.Context, rec *record) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l, m, err := r.readInFlight(ctx)
		if err != nil {
			return err
		}
		if e, ok := m[rec.Node]; !ok || e.Claim != rec.Claim {
			return nil
		}
		delete(m, rec.Node)
		return r.writeInFlight(ctx, l, m)
	})
	if err != nil {
		r.log.Debug("in-flight entry not released; the next claim drops it", "node", rec.Node, "err", err)
	}
}

package replace

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// LabelRecord marks the ConfigMaps that record replaceable grants.
const LabelRecord = "rebootmanager/replacement"

// The states of a record.
const (
	// StateGranted: the node was told to reboot; nothing done yet.
	StateGranted = "Granted"
	// StateReplacing: a replica claimed the replacement, terminated (or is about to
	// terminate) the instance, and waits for the node of a new instance.
	StateReplacing = "Replacing"
	// StateReplaced: a node of a new instance is Ready; the old Node is being deleted.
	StateReplaced = "Replaced"
	// StateFailed: the replacement failed; the record stays, counting towards
	// MaxFailures, until an operator deletes it.
	StateFailed = "Failed"
)

// record is what a ConfigMap keeps of a grant, under the key "record". It is about
// one grant: one Node object (UID) and one promotion, told to reboot at ToldAt.
type record struct {
	Node       string    `json:"node"`
	UID        types.UID `json:"uid"`
	Group      string    `json:"group"` // the FleetLock group
	ProviderID string    `json:"providerID"`
	Instance   Instance  `json:"instance"`
	// Promoted is the lock's promotion of this grant (rebootmanager/since): while the
	// Node's annotation says the same, the grant holds.
	Promoted time.Time `json:"promoted"`
	// ToldAt is the moment of the 2xx to pre-reboot, on the clock of the replica that
	// answered it; BootID the node's boot ID at that moment.
	ToldAt time.Time `json:"toldAt"`
	BootID string    `json:"bootID"`
	State  string    `json:"state"`
	// LeaseRenewTime is the renewTime of the node's Lease in kube-node-lease when the
	// replacement was claimed (the kubelet judged silent); nil if it had none. Any
	// other value later means the kubelet is alive.
	LeaseRenewTime *metav1.MicroTime `json:"leaseRenewTime,omitempty"`
	// Claim names one claim of the replacement; the in-flight lock holds it.
	Claim string `json:"claim,omitempty"`
	// TerminatedAt is when the instance was last asked to terminate (until then, when
	// the replacement was claimed), on the clock of the replica that asked; for
	// people. The replacement's timeout counts on each replica's own clock, from when
	// it first saw the instance out of service after the last attempt.
	TerminatedAt time.Time `json:"terminatedAt,omitzero"`
	// By is the replica that claimed the replacement.
	By string `json:"by,omitempty"`
	// Attempts counts the calls to terminate the instance, each written (conditioned on
	// the record) just before the call: of replicas that resume a claim at once, one
	// calls the cloud.
	Attempts int `json:"attempts,omitempty"`
	// Before are the group's instances in service when it was claimed: the
	// replacement is an instance not among them.
	Before []string `json:"before,omitempty"`
	// NewNode is the node of the new instance (state Replaced).
	NewNode string `json:"newNode,omitempty"`
	// Error is why the replacement failed.
	Error string `json:"error,omitempty"`

	cm *corev1.ConfigMap // as read, for conditioned writes
}

// recordName is the ConfigMap of a node's record: a DNS subdomain, unique per node.
func recordName(node string) string {
	name := "replace-" + node
	if len(name) > 253 {
		sum := sha256.Sum256([]byte(node))
		name = "replace-" + hex.EncodeToString(sum[:16])
	}
	return name
}

func decode(cm *corev1.ConfigMap) (record, error) {
	var rec record
	if err := json.Unmarshal([]byte(cm.Data["record"]), &rec); err != nil {
		return rec, fmt.Errorf("ConfigMap %s: %w", cm.Name, err)
	}
	rec.cm = cm
	return rec, nil
}

func encode(cm *corev1.ConfigMap, rec record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	cm.Data = map[string]string{"record": string(b)}
	return nil
}

// listRecords reads every record in namespace, consistently (not from a cache);
// unreadable ones are returned as errors beside the others.
func listRecords(ctx context.Context, client kubernetes.Interface, namespace string) ([]*record, []error, error) {
	list, err := client.CoreV1().ConfigMaps(namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelRecord + "=true"})
	if err != nil {
		return nil, nil, fmt.Errorf("list replacement records: %w", err)
	}
	var recs []*record
	var bad []error
	for i := range list.Items {
		rec, err := decode(&list.Items[i])
		if err != nil {
			bad = append(bad, err)
			continue
		}
		recs = append(recs, &rec)
	}
	slices.SortFunc(recs, func(a, b *record) int { return a.ToldAt.Compare(b.ToldAt) })
	return recs, bad, nil
}

// Record is a replacement record as `reboot-manager status` shows it.
type Record struct {
	// Node is the Node's name.
	Node string `json:"node"`
	// State is Granted, Replacing, Replaced or Failed.
	State string `json:"state"`
	// Instance is the node's cloud instance and its instance group (such as an Auto
	// Scaling group); Group is empty while unknown.
	Instance Instance `json:"instance"`
	// Group is the FleetLock group of the grant.
	Group string `json:"group"`
	// Since is when the record entered its state (the 2xx for Granted, the claim for
	// the others), on the clock of the replica that wrote it.
	Since time.Time `json:"since"`
	// Why says what the state means for this record: for Failed, the error.
	Why string `json:"why"`
}

// ListRecords returns the replacement records kept in namespace, oldest 2xx first.
// An unreadable record is listed with State "Unreadable" and the error as Why. The
// error is the API server's (the records are read with a consistent LIST).
func ListRecords(ctx context.Context, client kubernetes.Interface, namespace string) ([]Record, error) {
	recs, bad, err := listRecords(ctx, client, namespace)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, rec := range recs {
		o := Record{Node: rec.Node, State: rec.State, Instance: rec.Instance, Group: rec.Group, Since: rec.ToldAt}
		switch rec.State {
		case StateGranted:
			o.Why = "told to reboot with boot ID " + rec.BootID + "; replaced if it never returns"
		case StateReplacing:
			o.Since, o.Why = rec.TerminatedAt, "instance "+rec.Instance.ID+" terminated by "+rec.By+"; waiting for the node of a new instance"
		case StateReplaced:
			o.Since, o.Why = rec.TerminatedAt, "replaced by "+rec.NewNode+"; deleting the old Node"
		case StateFailed:
			o.Since, o.Why = rec.TerminatedAt, rec.Error
		}
		out = append(out, o)
	}
	for _, err := range bad {
		out = append(out, Record{State: "Unreadable", Why: err.Error()})
	}
	return out, nil
}

// update writes rec, conditioned on the ConfigMap as read: a 409 means another
// replica changed it first.
func (r *Replacer) update(ctx context.Context, rec *record) error {
	cm := rec.cm.DeepCopy()
	if err := encode(cm, *rec); err != nil {
		return err
	}
	out, err := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	rec.cm = out
	return nil
}

// forget deletes rec, conditioned on the ConfigMap as read.
func (r *Replacer) forget(ctx context.Context, rec *record) error {
	uid, rv := rec.cm.UID, rec.cm.ResourceVersion
	err := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace).Delete(ctx, rec.cm.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
	if apierrors.IsNotFound(err) {
		err = nil
	}
	r.mu.Lock()
	delete(r.noted, rec.Node)
	delete(r.watches, rec.Node)
	delete(r.quiet, rec.Node)
	delete(r.waiting, rec.Node)
	r.mu.Unlock()
	return err
}

// simpleID returns 16 random hex digits.
func simpleID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

package replace

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
)

// LabelRecord marks the ConfigMaps that record replaceable grants.
const LabelRecord = "rebootmanager/replacement"

// The states of a record.
const (
	// StateGranted: the node was granted a reboot; nothing done yet.
	StateGranted = "Granted"
	// StateReplacing: a replica terminated (or is terminating) the instance and waits
	// for the node of a new instance.
	StateReplacing = "Replacing"
	// StateReplaced: a node of a new instance is Ready; the old Node is being deleted.
	StateReplaced = "Replaced"
	// StateFailed: the replacement failed; the record stays, counting towards
	// MaxFailures, until an operator deletes it.
	StateFailed = "Failed"
)

// Options configure a Replacer.
type Options struct {
	// Cloud replaces instances. Required.
	Cloud Cloud
	// Client reads and deletes Nodes and keeps the records. Required.
	Client kubernetes.Interface
	// Namespace holds the records.
	Namespace string
	// Identity names this replica in the records it claims (its pod name).
	Identity string
	// Config returns the policy in force. Required.
	Config func() *policy.Config
	// Recorder posts Events on the Nodes. Optional.
	Recorder events.EventRecorder
	// Logger; default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Replacer replaces the nodes that fail to return after a granted reboot.
type Replacer struct {
	opts Options
	log  *slog.Logger
	// noted is what was last reported for a record (a guard's refusal, a dry run), so
	// that each is logged and posted once, not at every look.
	noted map[string]string

	replacements *prometheus.CounterVec
}

// record is what a ConfigMap keeps of a grant, under the key "record".
type record struct {
	Node       string    `json:"node"`
	Group      string    `json:"group"` // the FleetLock group
	ProviderID string    `json:"providerID"`
	Instance   Instance  `json:"instance"`
	BootID     string    `json:"bootID"`
	GrantedAt  time.Time `json:"grantedAt"`
	State      string    `json:"state"`
	// TerminatedAt is when the instance was terminated (state Replacing).
	TerminatedAt time.Time `json:"terminatedAt,omitzero"`
	// By is the replica that claimed the replacement.
	By string `json:"by,omitempty"`
	// Before are the group's instances in service when it was claimed: the
	// replacement is an instance not among them.
	Before []string `json:"before,omitempty"`
	// NewNode is the node of the new instance (state Replaced).
	NewNode string `json:"newNode,omitempty"`
	// Error is why the replacement failed.
	Error string `json:"error,omitempty"`

	cm *corev1.ConfigMap // as read, for conditioned writes
}

// New returns a Replacer; call Run.
func New(opts Options) *Replacer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Replacer{
		opts: opts, log: opts.Logger.With("cloud", opts.Cloud.Name()), noted: map[string]string{},
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_replacements_total",
			Help: "Replacements of nodes that failed to return, by result: started (instance terminated), replaced (a new node is Ready), failed, dry_run (would have started).",
		}, []string{"result"}),
	}
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

// BeforeReboot records the grant of a node whose group replaces failed nodes, before it
// reboots; it is what the lock.GrantHooks ToldToReboot does (hooks.go). A node that is not an instance of a
// supported group is not recorded (it is never replaced). A cloud that cannot say the
// node's instance group now is asked again when the node fails; only a failure to
// write the record refuses the reboot.
func (r *Replacer) BeforeReboot(ctx context.Context, n *corev1.Node, group string) error {
	if r.opts.Config().Group(group).ReplaceAfter.Duration == 0 {
		return nil
	}
	st, _ := lock.HolderOf(n)
	rec := record{Node: n.Name, Group: group, ProviderID: n.Spec.ProviderID, BootID: n.Status.NodeInfo.BootID,
		GrantedAt: st.Since, State: StateGranted}
	cms := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace)
	var old *corev1.ConfigMap // a record of an earlier grant, overwritten
	cm, err := cms.Get(ctx, recordName(n.Name), metav1.GetOptions{})
	switch {
	case err == nil:
		if prev, perr := decode(cm); perr == nil && prev.GrantedAt.Equal(rec.GrantedAt) {
			return nil // this grant is recorded (a re-entrant pre-reboot)
		}
		old = cm
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("read replacement record: %w", err)
	}
	id, ok := r.opts.Cloud.InstanceID(n.Spec.ProviderID)
	if !ok {
		r.log.Debug("not recorded for replacement: not this cloud's node", "node", n.Name, "providerID", n.Spec.ProviderID)
		return nil
	}
	rec.Instance = Instance{ID: id}
	in, err := r.opts.Cloud.Resolve(ctx, n.Spec.ProviderID)
	switch {
	case errors.Is(err, ErrNotManaged):
		r.log.Info("not recorded for replacement: its instance is in no instance group", "node", n.Name, "err", err)
		return nil
	case err != nil:
		r.log.Warn("instance group unknown at grant; asked again if the node fails", "node", n.Name, "err", err)
	default:
		rec.Instance = in
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
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("write replacement record: %w", err)
	}
	r.log.Info("grant recorded for replacement", "node", n.Name, "instance", rec.Instance.ID, "instanceGroup", rec.Instance.Group)
	return nil
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

func (r *Replacer) forget(ctx context.Context, rec *record) error {
	uid, rv := rec.cm.UID, rec.cm.ResourceVersion
	err := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace).Delete(ctx, rec.cm.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	delete(r.noted, rec.Node)
	return err
}

// Run looks at the records every replacement.interval until ctx ends.
func (r *Replacer) Run(ctx context.Context) {
	for {
		if err := r.Reconcile(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("replacement: cannot look at the records", "err", err)
		}
		t := time.NewTimer(r.opts.Config().Replacement.Interval.Duration)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Reconcile takes every record one step further, as far as the guards allow.
func (r *Replacer) Reconcile(ctx context.Context) error {
	list, err := r.opts.Client.CoreV1().ConfigMaps(r.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelRecord + "=true"})
	if err != nil {
		return err
	}
	var recs []*record
	for i := range list.Items {
		rec, err := decode(&list.Items[i])
		if err != nil {
			r.log.Warn("replacement: unreadable record, ignored", "err", err)
			continue
		}
		recs = append(recs, &rec)
	}
	slices.SortFunc(recs, func(a, b *record) int { return a.GrantedAt.Compare(b.GrantedAt) })
	for _, rec := range recs {
		var err error
		switch rec.State {
		case StateGranted:
			err = r.granted(ctx, rec, recs)
		case StateReplacing:
			err = r.replacing(ctx, rec)
		case StateReplaced:
			err = r.replaced(ctx, rec)
		}
		if err != nil && !apierrors.IsConflict(err) {
			r.log.Warn("replacement step failed; trying again", "node", rec.Node, "state", rec.State, "err", err)
		}
	}
	return nil
}

// granted decides whether a granted node failed to return, and if so, and the guards
// allow, claims its replacement and terminates its instance.
func (r *Replacer) granted(ctx context.Context, rec *record, all []*record) error {
	cfg := r.opts.Config()
	now := r.opts.Now()
	node, err := r.opts.Client.CoreV1().Nodes().Get(ctx, rec.Node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		node = nil
	case err != nil:
		return err
	}
	if node != nil {
		if st, holds := lock.HolderOf(node); !holds || st.State != lock.StateRebooting || !st.Since.Equal(rec.GrantedAt) {
			return r.forget(ctx, rec) // released: it came back, or an operator released it
		}
		if lock.NodeReady(node) {
			return nil // back, or not gone yet: steady-state will release it
		}
	}
	// Failed to return: NotReady (or gone) for replaceAfter, counted from the grant or
	// from when it went NotReady, whichever is later, so that a node whose reboot began
	// late is not taken for one that never came back.
	after := cfg.Group(rec.Group).ReplaceAfter.Duration
	down := rec.GrantedAt
	if node != nil {
		down = later(down, notReadySince(node))
	}
	if after == 0 || now.Sub(down) < after {
		return nil
	}
	// Failed to return. The guards, cheapest first; each refusal is reported once.
	rc := cfg.Replacement
	failed, inFlight := 0, 0
	for _, o := range all {
		switch o.State {
		case StateFailed:
			failed++
		case StateReplacing:
			inFlight++
		}
	}
	if failed >= rc.MaxFailures {
		return r.note(rec, node, "ReplacementStopped", fmt.Sprintf("not replaced: %d replacements failed (replacement.maxFailures %d); delete their records once the cause is fixed", failed, rc.MaxFailures))
	}
	if inFlight >= rc.MaxInFlight {
		return r.note(rec, node, "ReplacementWaiting", fmt.Sprintf("not replaced yet: %d replacements in flight (replacement.maxInFlight %d)", inFlight, rc.MaxInFlight))
	}
	if rec.Instance.Group == "" {
		in, err := r.opts.Cloud.Resolve(ctx, rec.ProviderID)
		if errors.Is(err, ErrNotManaged) {
			r.log.Info("failed node not replaceable: its instance is in no instance group", "node", rec.Node, "err", err)
			return r.forget(ctx, rec)
		}
		if err != nil {
			return err
		}
		rec.Instance = in
	}
	if slices.ContainsFunc(all, func(o *record) bool { return o.State == StateReplacing && o.Instance.Group == rec.Instance.Group }) {
		return r.note(rec, node, "ReplacementWaiting", "not replaced yet: a replacement in instance group "+rec.Instance.Group+" is in flight")
	}
	if err := r.opts.Cloud.Preflight(ctx, rec.Instance); err != nil {
		var guard *GuardError
		if !errors.As(err, &guard) {
			return err // the cloud's API: try again
		}
		if node == nil && (guard.Guard == "NotInGroup" || guard.Guard == "NotInService") {
			// Gone from the cluster, and its instance from the group: nothing to do.
			r.log.Info("failed node gone and its instance not replaceable; record dropped", "node", rec.Node, "err", err)
			return r.forget(ctx, rec)
		}
		return r.note(rec, node, "Replacement"+guard.Guard, "not replaced: "+err.Error())
	}
	state := "NotReady"
	if node == nil {
		state = "gone"
	}
	if rc.DryRun {
		if r.noted[rec.Node] != "dry-run" {
			r.replacements.WithLabelValues("dry_run").Inc()
		}
		return r.note(rec, node, "ReplacementDryRun", fmt.Sprintf("dry run: would replace instance %s of %s (node %s %s, granted %s ago)",
			rec.Instance.ID, rec.Instance.Group, rec.Node, state, now.Sub(rec.GrantedAt).Round(time.Second)), "dry-run")
	}
	before, err := r.opts.Cloud.InService(ctx, rec.Instance)
	if err != nil {
		return err
	}
	// Claim: the conditioned write only one replica wins.
	rec.State, rec.TerminatedAt, rec.By, rec.Before = StateReplacing, now, r.opts.Identity, before
	if err := r.update(ctx, rec); err != nil {
		return err
	}
	r.log.Warn("replacing a node that failed to return", "node", rec.Node, "instance", rec.Instance.ID,
		"instanceGroup", rec.Instance.Group, "state", state, "downFor", now.Sub(down).Round(time.Second),
		"grantedFor", now.Sub(rec.GrantedAt).Round(time.Second))
	r.event(rec.Node, corev1.EventTypeWarning, "NodeReplacing", fmt.Sprintf("%s %s for %s after its reboot was granted: terminating instance %s in %s, which launches a new one",
		rec.Node, state, now.Sub(down).Round(time.Second), rec.Instance.ID, rec.Instance.Group))
	return r.terminate(ctx, rec)
}

// notReadySince is when the node's Ready condition last changed, if it is not True.
func notReadySince(n *corev1.Node) time.Time {
	if c, ok := lock.ReadyCondition(n); ok && c.Status != corev1.ConditionTrue {
		return c.LastTransitionTime.Time
	}
	return time.Time{}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// terminate asks the cloud to replace the instance; a failure fails the record.
func (r *Replacer) terminate(ctx context.Context, rec *record) error {
	if err := r.opts.Cloud.Replace(ctx, rec.Instance); err != nil {
		return r.fail(ctx, rec, "terminate instance: "+err.Error())
	}
	r.replacements.WithLabelValues("started").Inc()
	return nil
}

func (r *Replacer) fail(ctx context.Context, rec *record, why string) error {
	rec.State, rec.Error = StateFailed, why
	r.replacements.WithLabelValues("failed").Inc()
	r.log.Error("node replacement failed", "node", rec.Node, "instance", rec.Instance.ID, "err", why)
	r.event(rec.Node, corev1.EventTypeWarning, "ReplacementFailed", why)
	return r.update(ctx, rec)
}

// replacing waits for a node of a new instance of the group to be Ready, then deletes
// the old Node, which frees its slot, and forgets the record.
func (r *Replacer) replacing(ctx context.Context, rec *record) error {
	now := r.opts.Now()
	ids, err := r.opts.Cloud.InService(ctx, rec.Instance)
	if err != nil {
		return err
	}
	if slices.Contains(ids, rec.Instance.ID) {
		// Claimed, but the termination did not happen (the replica stopped in between,
		// or the cloud has not acted yet): ask again; terminating is idempotent.
		return r.terminate(ctx, rec)
	}
	nodes, err := r.opts.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		id, ok := r.opts.Cloud.InstanceID(n.Spec.ProviderID)
		if !ok || !slices.Contains(ids, id) || slices.Contains(rec.Before, id) || !lock.NodeReady(n) {
			continue // not a node of a new instance of the group, or not Ready yet
		}
		rec.State, rec.NewNode = StateReplaced, n.Name
		if err := r.update(ctx, rec); err != nil {
			return err // 409: another replica saw it first
		}
		r.replacements.WithLabelValues("replaced").Inc()
		r.log.Info("node replaced", "node", rec.Node, "newNode", n.Name, "instance", id,
			"took", now.Sub(rec.TerminatedAt).Round(time.Second))
		r.event(n.Name, corev1.EventTypeNormal, "NodeReplaced", fmt.Sprintf("replaces %s (instance %s), which failed to return from its reboot", rec.Node, rec.Instance.ID))
		return r.replaced(ctx, rec)
	}
	if now.Sub(rec.TerminatedAt) > r.opts.Config().Replacement.Timeout.Duration {
		return r.fail(ctx, rec, fmt.Sprintf("no Ready node of a new instance of %s %s after terminating %s",
			rec.Instance.Group, now.Sub(rec.TerminatedAt).Round(time.Second), rec.Instance.ID))
	}
	return nil
}

// replaced deletes the old Node, whose lock slot goes with it, and forgets the record.
func (r *Replacer) replaced(ctx context.Context, rec *record) error {
	err := r.opts.Client.CoreV1().Nodes().Delete(ctx, rec.Node, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the old node: %w", err)
	}
	r.log.Info("old node deleted; its slot is free", "node", rec.Node)
	return r.forget(ctx, rec)
}

// note reports a guard's refusal (or a dry run) for a record once, until it changes.
func (r *Replacer) note(rec *record, node *corev1.Node, reason, msg string, key ...string) error {
	k := reason + ": " + msg
	if len(key) > 0 {
		k = key[0]
	}
	if r.noted[rec.Node] == k {
		return nil
	}
	r.noted[rec.Node] = k
	r.log.Info("replacement: "+msg, "node", rec.Node, "reason", reason)
	if node != nil {
		r.event(rec.Node, corev1.EventTypeNormal, reason, msg)
	}
	return nil
}

func (r *Replacer) event(node, eventType, reason, note string) {
	if r.opts.Recorder == nil {
		return
	}
	r.opts.Recorder.Eventf(evict.NodeRef(node), nil, eventType, reason, "Replace", "%s", note)
}

// Describe implements prometheus.Collector.
func (r *Replacer) Describe(ch chan<- *prometheus.Desc) { r.replacements.Describe(ch) }

// Collect implements prometheus.Collector.
func (r *Replacer) Collect(ch chan<- prometheus.Metric) { r.replacements.Collect(ch) }

package replace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
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

// DefaultResumeAfter is how long a Replacing record whose instance is in service
// must stay unchanged, as this replica sees it, before it asks to terminate the
// instance again: longer than a terminate call with its timeouts, so that it does not
// ask while another replica's call is under way.
const DefaultResumeAfter = 30 * time.Second

// DefaultAPIGrace is how long replacement stays paused after this replica last
// failed to reach the API server: twice a kubelet's 10s Lease renewal period (its
// renewals fail during an outage too, and it retries with a backoff of up to 7s).
const DefaultAPIGrace = 20 * time.Second

// Options configure a Replacer.
type Options struct {
	// Cloud replaces instances. Required.
	Cloud Cloud
	// Client reads Nodes and their Leases, deletes Nodes and keeps the records and
	// the in-flight Lease. Required.
	Client kubernetes.Interface
	// Namespace holds the records and the in-flight Lease.
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
	// APIGrace pauses replacement this long after this replica last failed to reach
	// the API server, and after it started. Default DefaultAPIGrace.
	APIGrace time.Duration
	// ResumeAfter: a claimed replacement whose instance is still in service is taken
	// up again (its instance terminated) only once its record stayed unchanged this
	// long on this replica's clock. Default DefaultResumeAfter.
	ResumeAfter time.Duration
}

// Replacer replaces the nodes that fail to return after a granted reboot. It
// implements lock.GrantHooks (hooks.go).
type Replacer struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// noted is what was last reported for a record (a guard's refusal, a dry run), so
	// that each is logged and posted once, not at every look.
	noted map[string]string
	// watches are what this replica saw of each record's kubelet (evidence.go).
	watches map[string]watch
	// downAt is when this replica last failed to reach the API server (or started:
	// it has seen nothing before).
	downAt time.Time
	// quiet is, per Replacing record, its resourceVersion and when this replica first
	// saw it.
	quiet map[string]seenAt
	// waiting is, per Replacing record whose instance is out of service, its claim
	// and attempt, and when this replica first saw it so.
	waiting map[string]seenAt

	replacements *prometheus.CounterVec
}

// New returns a Replacer; call Run.
func New(opts Options) *Replacer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.APIGrace <= 0 {
		opts.APIGrace = DefaultAPIGrace
	}
	if opts.ResumeAfter <= 0 {
		opts.ResumeAfter = DefaultResumeAfter
	}
	return &Replacer{
		opts: opts, log: opts.Logger.With("cloud", opts.Cloud.Name()),
		noted: map[string]string{}, watches: map[string]watch{}, quiet: map[string]seenAt{},
		waiting: map[string]seenAt{},
		downAt:  opts.Now(),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_replacements_total",
			Help: "Replacements of nodes that failed to return, by result: started (instance terminated), replaced (a new node is Ready), failed, dry_run (would have started).",
		}, []string{"result"}),
	}
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

// Reconcile takes every record one step further, as far as the evidence and the
// guards allow.
func (r *Replacer) Reconcile(ctx context.Context) error {
	recs, bad, err := listRecords(ctx, r.opts.Client, r.opts.Namespace)
	if err != nil {
		return r.apiDown(err)
	}
	for _, err := range bad {
		r.log.Warn("replacement: unreadable record, ignored", "err", err)
	}
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

// granted decides whether a node told to reboot failed to return and, if so and the
// guards allow, claims its replacement and terminates its instance.
func (r *Replacer) granted(ctx context.Context, rec *record, all []*record) error {
	l, failed, err := r.failedToReturn(ctx, rec)
	if err != nil || !failed {
		return err
	}
	if ok, err := r.guards(ctx, rec, l, all); err != nil || !ok {
		return err
	}
	return r.claim(ctx, rec, l)
}

// failedToReturn looks at rec's node now: failed is true once, for replaceAfter
// after the 2xx, continuously, its boot ID stayed the one of the 2xx and its kubelet
// was silent (evidence.go), and no API outage was seen for Options.APIGrace.
func (r *Replacer) failedToReturn(ctx context.Context, rec *record) (look, bool, error) {
	if rec.UID == "" || rec.ToldAt.IsZero() {
		// Written by an earlier version, without this grant's identity: it never
		// justifies a replacement.
		r.log.Info("replacement record without the grant's identity dropped", "node", rec.Node)
		return look{}, false, r.forget(ctx, rec)
	}
	l, err := r.read(ctx, rec)
	if err != nil {
		return l, false, err
	}
	if l.released {
		return l, false, r.forget(ctx, rec) // released: it came back, or an operator released it
	}
	now := r.opts.Now()
	after := r.opts.Config().Group(rec.Group).ReplaceAfter.Duration
	if l.back != "" || after == 0 {
		r.mu.Lock()
		delete(r.watches, rec.Node)
		r.mu.Unlock()
		return l, false, nil // steady-state will release it
	}
	if r.silentFor(rec, l, now) < after || r.paused(now) {
		return l, false, nil
	}
	other, err := r.otherNode(ctx, rec)
	if err != nil || other != "" {
		if err != nil {
			return l, false, err
		}
		return l, false, r.note(rec, l.node, "ReplacementAbandoned", "not replaced: its instance is Node "+other+" now")
	}
	return l, true, nil
}

// guards runs the guards, cheapest first; each refusal is reported once. ok is
// true when the replacement may be claimed.
func (r *Replacer) guards(ctx context.Context, rec *record, l look, all []*record) (bool, error) {
	rc := r.opts.Config().Replacement
	failed := 0
	for _, o := range all {
		if o.State == StateFailed {
			failed++
		}
	}
	if failed >= rc.MaxFailures {
		return false, r.note(rec, l.node, "ReplacementStopped", fmt.Sprintf("not replaced: %d replacements failed (replacement.maxFailures %d); delete their records once the cause is fixed", failed, rc.MaxFailures))
	}
	if rec.Instance.Group == "" {
		in, err := r.opts.Cloud.Resolve(ctx, rec.ProviderID)
		if errors.Is(err, ErrNotManaged) {
			r.log.Info("failed node not replaceable: its instance is in no instance group", "node", rec.Node, "err", err)
			return false, r.forget(ctx, rec)
		}
		if err != nil {
			return false, err
		}
		rec.Instance = in
	}
	if why, err := r.admitted(ctx, rec); err != nil || why != "" {
		if err != nil {
			return false, err
		}
		return false, r.note(rec, l.node, "ReplacementWaiting", "not replaced yet: "+why)
	}
	if err := r.opts.Cloud.Preflight(ctx, rec.Instance); err != nil {
		var guard *GuardError
		if !errors.As(err, &guard) {
			return false, err // the cloud's API: try again
		}
		if l.node == nil && (guard.Guard == "NotInGroup" || guard.Guard == "NotInService") {
			// Gone from the cluster, and its instance from the group: nothing to do.
			r.log.Info("failed node gone and its instance not replaceable; record dropped", "node", rec.Node, "err", err)
			return false, r.forget(ctx, rec)
		}
		return false, r.note(rec, l.node, "Replacement"+guard.Guard, "not replaced: "+err.Error())
	}
	if rc.DryRun {
		r.mu.Lock()
		first := r.noted[rec.Node] != "dry-run"
		r.mu.Unlock()
		if first {
			r.replacements.WithLabelValues("dry_run").Inc()
		}
		return false, r.note(rec, l.node, "ReplacementDryRun", fmt.Sprintf("dry run: would replace instance %s of %s (node %s %s since it was told to reboot %s ago)",
			rec.Instance.ID, rec.Instance.Group, rec.Node, downState(l), r.opts.Now().Sub(rec.ToldAt).Round(time.Second)), "dry-run")
	}
	return true, nil
}

func downState(l look) string {
	if l.node == nil {
		return "gone"
	}
	return "silent"
}

// claim claims the replacement (a write conditioned on the record: one replica
// wins), takes its place in flight, and terminates the instance.
func (r *Replacer) claim(ctx context.Context, rec *record, l look) error {
	before, err := r.opts.Cloud.InService(ctx, rec.Instance)
	if err != nil {
		return err
	}
	rec.State, rec.TerminatedAt, rec.By, rec.Before = StateReplacing, r.opts.Now(), r.opts.Identity, before
	rec.LeaseRenewTime, rec.Claim = l.lease, r.opts.Identity+"/"+simpleID()
	if err := r.update(ctx, rec); err != nil {
		return err
	}
	r.log.Warn("replacing a node that failed to return", "node", rec.Node, "instance", rec.Instance.ID,
		"instanceGroup", rec.Instance.Group, "state", downState(l), "toldFor", r.opts.Now().Sub(rec.ToldAt).Round(time.Second))
	return r.terminate(ctx, rec)
}

// terminate terminates rec's instance once rec holds its place in flight and a fresh
// read finds its node still failed; a node found back ends the replacement, a
// refusal of the cloud fails the record.
func (r *Replacer) terminate(ctx context.Context, rec *record) error {
	why, err := r.acquire(ctx, rec)
	if err != nil {
		return err
	}
	if why != "" {
		// Another replica took the place first: not started; try again later.
		if err := r.unclaim(ctx, rec); err != nil {
			return err
		}
		return r.note(rec, nil, "ReplacementWaiting", "not replaced yet: "+why)
	}
	l, err := r.stillFailed(ctx, rec)
	if stop, ok := errors.AsType[*errStop](err); ok {
		return r.abandon(ctx, rec, l, stop.why)
	}
	if err != nil {
		return err
	}
	if r.paused(r.opts.Now()) {
		return nil // an API outage hid the node's kubelet: wait for it to post again
	}
	// Each call is written first, conditioned on the record: of replicas that resume
	// this claim at once, one goes on.
	rec.Attempts, rec.TerminatedAt = rec.Attempts+1, r.opts.Now()
	if err := r.update(ctx, rec); err != nil {
		return err
	}
	r.event(rec.Node, corev1.EventTypeWarning, "NodeReplacing", fmt.Sprintf("%s %s since it was told to reboot %s ago: terminating instance %s in %s, which launches a new one",
		rec.Node, downState(l), r.opts.Now().Sub(rec.ToldAt).Round(time.Second), rec.Instance.ID, rec.Instance.Group))
	if err := r.opts.Cloud.Replace(ctx, rec.Instance); err != nil {
		if errors.Is(err, ErrTryAgain) {
			// Still claimed: the next look reads the node again before asking again.
			return fmt.Errorf("terminate instance %s: %w", rec.Instance.ID, err)
		}
		return r.fail(ctx, rec, "terminate instance: "+err.Error())
	}
	r.replacements.WithLabelValues("started").Inc()
	return nil
}

// abandon ends a replacement claimed but not started: the node is back (or its grant
// ended). Its record goes back to Granted, or goes if the grant was released.
func (r *Replacer) abandon(ctx context.Context, rec *record, l look, why string) error {
	r.log.Info("replacement abandoned before terminating: "+why, "node", rec.Node, "instance", rec.Instance.ID)
	r.event(rec.Node, corev1.EventTypeNormal, "ReplacementAbandoned", "not replaced: "+why)
	if l.released {
		claimed := *rec
		if err := r.forget(ctx, rec); err != nil {
			return err
		}
		r.release(ctx, &claimed)
		return nil
	}
	return r.unclaim(ctx, rec)
}

// unclaim puts a claimed replacement whose instance was not terminated back to
// Granted, and gives its place in flight back.
func (r *Replacer) unclaim(ctx context.Context, rec *record) error {
	claimed := *rec
	rec.State, rec.TerminatedAt, rec.By, rec.Before, rec.LeaseRenewTime, rec.Claim = StateGranted, time.Time{}, "", nil, nil, ""
	if err := r.update(ctx, rec); err != nil {
		return err
	}
	r.release(ctx, &claimed)
	return nil
}

func (r *Replacer) fail(ctx context.Context, rec *record, why string) error {
	rec.State, rec.Error = StateFailed, why
	r.replacements.WithLabelValues("failed").Inc()
	r.log.Error("node replacement failed", "node", rec.Node, "instance", rec.Instance.ID, "err", why)
	r.event(rec.Node, corev1.EventTypeWarning, "ReplacementFailed", why)
	claimed := *rec
	if err := r.update(ctx, rec); err != nil {
		return err
	}
	r.release(ctx, &claimed)
	return nil
}

// replacing terminates the instance of a claim whose termination did not happen (the
// replica stopped in between), or waits for a node of a new instance of the group to
// be Ready, then deletes the old Node.
func (r *Replacer) replacing(ctx context.Context, rec *record) error {
	now := r.opts.Now()
	ids, err := r.opts.Cloud.InService(ctx, rec.Instance)
	if err != nil {
		return err
	}
	if slices.Contains(ids, rec.Instance.ID) {
		// Claimed, but the termination did not happen (the replica stopped in between,
		// the cloud said not now, or has not acted yet): ask again, after the same
		// checks, once no replica has touched the record for ResumeAfter (one may be
		// calling the cloud right now).
		if !r.quietFor(rec, now) {
			return nil
		}
		return r.terminate(ctx, rec)
	}
	newNode, err := r.newNode(ctx, rec, ids)
	if err != nil {
		return err
	}
	if newNode != nil {
		rec.State, rec.NewNode = StateReplaced, newNode.Name
		if err := r.update(ctx, rec); err != nil {
			return err // 409: another replica saw it first
		}
		r.replacements.WithLabelValues("replaced").Inc()
		r.log.Info("node replaced", "node", rec.Node, "newNode", newNode.Name, "took", now.Sub(rec.TerminatedAt).Round(time.Second))
		r.event(newNode.Name, corev1.EventTypeNormal, "NodeReplaced", fmt.Sprintf("replaces %s (instance %s), which failed to return from its reboot", rec.Node, rec.Instance.ID))
		return r.replaced(ctx, rec)
	}
	if waited := now.Sub(r.waitingSince(rec, now)); waited > r.opts.Config().Replacement.Timeout.Duration {
		return r.fail(ctx, rec, fmt.Sprintf("no Ready node of a new instance of %s %s after terminating %s",
			rec.Instance.Group, waited.Round(time.Second), rec.Instance.ID))
	}
	return nil
}

// waitingSince returns when this replica first saw rec's instance out of service
// after this attempt, on its own clock: TerminatedAt is another replica's clock.
func (r *Replacer) waitingSince(rec *record, now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := fmt.Sprintf("%s#%d", rec.Claim, rec.Attempts)
	s, ok := r.waiting[rec.Node]
	if !ok || s.rv != key {
		s = seenAt{rv: key, at: now}
		r.waiting[rec.Node] = s
	}
	return s.at
}

// seenAt is a record's resourceVersion and when this replica first saw it.
type seenAt struct {
	rv string
	at time.Time
}

// quietFor reports whether rec's record has stayed as it is for Options.ResumeAfter,
// as this replica saw it (its own clock).
func (r *Replacer) quietFor(rec *record, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.quiet[rec.Node]
	if !ok || s.rv != rec.cm.ResourceVersion {
		r.quiet[rec.Node] = seenAt{rv: rec.cm.ResourceVersion, at: now}
		return false
	}
	return now.Sub(s.at) >= r.opts.ResumeAfter
}

// newNode returns a Ready node of an instance of the group in service now (ids) that
// was not when the replacement was claimed; nil if none yet.
func (r *Replacer) newNode(ctx context.Context, rec *record, ids []string) (*corev1.Node, error) {
	nodes, err := r.opts.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, r.apiDown(err)
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		id, ok := r.opts.Cloud.InstanceID(n.Spec.ProviderID)
		if ok && slices.Contains(ids, id) && !slices.Contains(rec.Before, id) && lock.NodeReady(n) {
			return n, nil
		}
	}
	return nil, nil
}

// replaced deletes the old Node, whose lock slot goes with it, and forgets the record.
// The Node is deleted only if a fresh read finds it the same object (UID, a
// precondition of the delete), of the terminated instance, not back and still
// holding this grant; otherwise it is left to its owner (the cloud's node controller
// deletes the Nodes of terminated instances).
func (r *Replacer) replaced(ctx context.Context, rec *record) error {
	_, err := r.stillFailed(ctx, rec)
	if stop, ok := errors.AsType[*errStop](err); ok {
		r.log.Info("old node not deleted: "+stop.why, "node", rec.Node, "instance", rec.Instance.ID)
		r.release(ctx, rec)
		return r.forget(ctx, rec)
	}
	if err != nil {
		return err
	}
	err = r.opts.Client.CoreV1().Nodes().Delete(ctx, rec.Node, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &rec.UID}})
	switch {
	case apierrors.IsNotFound(err):
	case apierrors.IsConflict(err):
		r.log.Info("old node not deleted: a new Node object has its name", "node", rec.Node)
	case err != nil:
		return fmt.Errorf("delete the old node: %w", err)
	default:
		r.log.Info("old node deleted; its slot is free", "node", rec.Node)
	}
	r.release(ctx, rec)
	return r.forget(ctx, rec)
}

// note reports a guard's refusal (or a dry run) for a record once, until it changes.
func (r *Replacer) note(rec *record, node *corev1.Node, reason, msg string, key ...string) error {
	k := reason + ": " + msg
	if len(key) > 0 {
		k = key[0]
	}
	r.mu.Lock()
	seen := r.noted[rec.Node] == k
	r.noted[rec.Node] = k
	r.mu.Unlock()
	if seen {
		return nil
	}
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

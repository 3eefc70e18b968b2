package evict

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// drain is one node's drain. Its run goroutine owns every field below "owned by run";
// the progress is guarded by the Drainer's mutex.
type drain struct {
	d      *Drainer
	node   string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	prev   *drain        // a forgotten drain of the same node, to outlive
	done   chan struct{} // Progress.Done
	once   sync.Once
	exited chan struct{} // closed when run has returned and no worker runs

	progress Progress // guarded by d.mu

	kickMu sync.Mutex
	kicked map[string]bool // budgets (namespace/name) that now allow a disruption
	wake   chan struct{}   // capacity 1: something changed

	// owned by run
	started   time.Time
	pods      cache.Store // the node's pods, kept by a watch
	targets   []*target   // the pods that must leave, sorted, Self last
	results   chan result
	inflight  int
	workers   sync.WaitGroup
	announced map[string]bool // budgets whose refusal was logged and posted
	forcing   bool            // Force's timeout passed: delete instead of evict
	timedOut  bool
	forced    int
	listErr   error // the last failure of the final check
	// blockedSince is when a budget began to refuse this drain; zero while none does.
	blockedSince time.Time
}

// target is a pod that must leave the node, identified by its UID: a pod of the same
// name with another UID (a StatefulSet's replacement) is another pod.
type target struct {
	key       string // namespace/name
	uid       types.UID
	pod       *corev1.Pod // as last seen
	self      bool
	unmanaged bool
	localData bool

	gone        bool // deleted, replaced, or finished
	terminating bool // being deleted: evicted by us or anyone; wait for it
	inflight    bool
	failures    int
	nextTry     time.Time
	blockedBy   []string // budgets that refused its last eviction
	err         error    // the last attempt's error
	errAt       time.Time
	warned      bool // its first error was logged at warning level
}

type op int

const (
	opEvict op = iota
	opDelete
)

type outcome int

const (
	accepted outcome = iota // eviction or deletion accepted: the pod terminates
	notFound                // no pod of that name: ours is gone
	conflict                // the pod of that name is another one, or changed
	refused                 // a PodDisruptionBudget said no
	failed                  // anything else
)

type result struct {
	t       *target
	op      op
	outcome outcome
	budgets []string
	err     error
}

func newDrain(d *Drainer, node string, prev *drain) *drain {
	ctx, cancel := context.WithCancel(d.base)
	dr := &drain{
		d:         d,
		node:      node,
		log:       d.log.With("node", node),
		ctx:       ctx,
		cancel:    cancel,
		prev:      prev,
		done:      make(chan struct{}),
		exited:    make(chan struct{}),
		wake:      make(chan struct{}, 1),
		kicked:    map[string]bool{},
		results:   make(chan result, d.opts.Parallelism),
		announced: map[string]bool{},
		started:   time.Now(),
	}
	dr.progress = Progress{Node: node, Started: dr.started, Done: dr.done}
	return dr
}

func (dr *drain) closeDone() { dr.once.Do(func() { close(dr.done) }) }

// poke wakes the run loop.
func (dr *drain) poke() {
	select {
	case dr.wake <- struct{}{}:
	default:
	}
}

// kick tells the drain that budget now allows a disruption.
func (dr *drain) kick(budget string) {
	dr.kickMu.Lock()
	dr.kicked[budget] = true
	dr.kickMu.Unlock()
	dr.poke()
}

// run drives the drain until the node is drained, the drain gives up, or its
// context ends (Forget, or Run returning).
func (dr *drain) run() {
	defer close(dr.exited)
	defer dr.workers.Wait()
	defer dr.cancel()
	if dr.prev != nil {
		select {
		case <-dr.prev.exited:
		case <-dr.ctx.Done():
			return
		}
	}
	select {
	case <-dr.d.running:
	case <-dr.ctx.Done():
		return
	}
	stopWatch, ok := dr.watchPods()
	if !ok {
		return
	}
	defer stopWatch()
	dr.selectTargets()
	dr.announce()

	opts := dr.d.opts
	deadline := dr.started.Add(opts.Timeout)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var checkAgain time.Time // when to repeat a final check that failed
	for {
		dr.refresh()
		dr.takeKicks()
		now := time.Now()
		if dr.left() == 0 && !now.Before(checkAgain) {
			if dr.confirmGone() {
				dr.succeed()
				return
			}
			checkAgain = now.Add(opts.BackoffBase)
		}
		if opts.FailurePolicy != KeepRefusing && !dr.timedOut && !now.Before(deadline) {
			dr.timedOut = true
			if opts.FailurePolicy == Release {
				dr.fail()
				return
			}
			dr.startForcing()
		}
		dr.launch(now)
		dr.d.publish(dr, dr.snapshot())

		wakeAt := dr.nextTry()
		if !checkAgain.IsZero() && dr.left() == 0 {
			wakeAt = earliest(wakeAt, checkAgain)
		}
		if opts.FailurePolicy != KeepRefusing && !dr.timedOut {
			wakeAt = earliest(wakeAt, deadline)
		}
		timer.Stop()
		if !wakeAt.IsZero() {
			timer.Reset(max(time.Until(wakeAt), time.Millisecond))
		}
		select {
		case <-dr.ctx.Done():
			return
		case <-dr.wake:
		case r := <-dr.results:
			dr.handle(r)
		case <-timer.C:
		}
	}
}

// earliest returns the earlier of two times, a zero time meaning "none".
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// watchPods starts a watch of the pods bound to the node and waits until it has
// listed them. It returns a function that stops the watch, or false if the drain's
// context ended first.
func (dr *drain) watchPods() (func(), bool) {
	ctx, cancel := context.WithCancel(dr.ctx)
	selector := fields.OneTermEqualSelector("spec.nodeName", dr.node).String()
	factory := informers.NewSharedInformerFactoryWithOptions(dr.d.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }),
		informers.WithTransform(stripManagedFields))
	inf := factory.Core().V1().Pods().Informer()
	poke := func(any) { dr.poke() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { dr.poke() },
		DeleteFunc: poke,
	}); err != nil {
		dr.log.Error("cannot watch the node's pods", "err", err)
	}
	factory.Start(ctx.Done())
	stop := func() {
		cancel()
		factory.Shutdown()
	}
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		stop()
		return nil, false
	}
	dr.pods = inf.GetStore()
	return stop, true
}

// selectTargets picks, from the node's pods as first listed, those that must leave.
// Pods bound to the node later are not added: the node is cordoned, so only pods that
// tolerate that arrive, and evicting what keeps coming back would never end.
func (dr *drain) selectTargets() {
	for _, obj := range dr.pods.List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok || classify(pod) != evictIt {
			continue
		}
		t := &target{
			key:         pod.Namespace + "/" + pod.Name,
			uid:         pod.UID,
			pod:         pod,
			unmanaged:   unmanaged(pod),
			localData:   hasLocalData(pod),
			terminating: pod.DeletionTimestamp != nil,
		}
		t.self = t.key == dr.d.opts.Self
		dr.targets = append(dr.targets, t)
	}
	sort.Slice(dr.targets, func(i, j int) bool {
		a, b := dr.targets[i], dr.targets[j]
		if a.self != b.self {
			return b.self
		}
		return a.key < b.key
	})
}

// announce logs and posts the drain's start, and the pods whose eviction loses
// something: no controller recreates them, or their emptyDir data.
func (dr *drain) announce() {
	var bare, local []string
	for _, t := range dr.targets {
		if t.unmanaged {
			bare = append(bare, t.key)
			dr.log.Warn("evicting a pod no controller recreates", "pod", t.key)
		}
		if t.localData {
			local = append(local, t.key)
			dr.log.Warn("evicting a pod with emptyDir data", "pod", t.key)
		}
	}
	dr.log.Info("drain started", "pods", len(dr.targets), "unmanaged", len(bare), "localData", len(local))
	dr.event(nil, corev1.EventTypeNormal, ReasonDrainStarted, actionDrain, "Draining node: %d pods to evict", len(dr.targets))
	if len(bare) > 0 {
		dr.event(nil, corev1.EventTypeWarning, ReasonDrainUnmanagedPods, actionEvict,
			"Evicting %d pods that no controller recreates: %s", len(bare), listNames(bare))
	}
	if len(local) > 0 {
		dr.event(nil, corev1.EventTypeWarning, ReasonDrainLocalData, actionEvict,
			"Evicting %d pods whose emptyDir data is lost: %s", len(local), listNames(local))
	}
}

// refresh updates the targets from the watched pods.
func (dr *drain) refresh() {
	for _, t := range dr.targets {
		if t.gone {
			continue
		}
		obj, exists, _ := dr.pods.GetByKey(t.key)
		pod, _ := obj.(*corev1.Pod)
		if !exists || pod == nil || pod.UID != t.uid || finished(pod) {
			t.gone, t.blockedBy, t.err = true, nil, nil
			dr.log.Debug("pod gone", "pod", t.key)
			continue
		}
		t.pod = pod
		if pod.DeletionTimestamp != nil && !t.terminating {
			t.terminating, t.blockedBy, t.err = true, nil, nil
		}
	}
}

// takeKicks makes the pods blocked by a budget that now allows a disruption due.
func (dr *drain) takeKicks() {
	dr.kickMu.Lock()
	kicked := dr.kicked
	dr.kicked = map[string]bool{}
	dr.kickMu.Unlock()
	if len(kicked) == 0 {
		return
	}
	for _, t := range dr.targets {
		for _, b := range t.blockedBy {
			if kicked[b] {
				t.nextTry = time.Time{}
			}
		}
	}
}

// left counts the targets not gone yet.
func (dr *drain) left() int {
	n := 0
	for _, t := range dr.targets {
		if !t.gone {
			n++
		}
	}
	return n
}

// due reports whether t waits for an attempt (not necessarily now).
func (dr *drain) due(t *target) bool {
	if t.gone || t.terminating || t.inflight {
		return false
	}
	if t.self {
		// Self leaves last, once every other pod is gone.
		for _, o := range dr.targets {
			if !o.self && !o.gone {
				return false
			}
		}
	}
	return true
}

// nextTry returns when the next attempt is due; zero if none is, or if no attempt may
// start before one in flight ends (its result wakes the loop).
func (dr *drain) nextTry() time.Time {
	var at time.Time
	if dr.inflight >= dr.d.opts.Parallelism {
		return at
	}
	for _, t := range dr.targets {
		if dr.due(t) {
			at = earliest(at, t.nextTry)
			if at.IsZero() {
				return time.Unix(0, 1) // due now
			}
		}
	}
	return at
}

// launch starts the attempts that are due, up to Parallelism in flight.
func (dr *drain) launch(now time.Time) {
	for _, t := range dr.targets {
		if dr.inflight >= dr.d.opts.Parallelism {
			return
		}
		if !dr.due(t) || now.Before(t.nextTry) {
			continue
		}
		o := opEvict
		if dr.forcing {
			o = opDelete
		}
		t.inflight = true
		dr.inflight++
		dr.workers.Add(1)
		pod := t.pod
		go func() {
			defer dr.workers.Done()
			dr.results <- dr.attempt(t, pod, o)
		}()
	}
}

// attempt evicts (or deletes) one pod. It runs on its own goroutine and reads
// nothing of t but what never changes.
func (dr *drain) attempt(t *target, pod *corev1.Pod, o op) result {
	r := result{t: t, op: o}
	ctx := dr.ctx
	if err := dr.d.limiter.Wait(ctx); err != nil {
		r.outcome, r.err = failed, err
		return r
	}
	uid := t.uid
	var err error
	if o == opDelete {
		err = dr.d.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &uid},
		})
	} else {
		err = dr.d.evict(ctx, pod.Namespace, pod.Name, uid)
	}
	r.err = err
	switch {
	case err == nil:
		r.outcome = accepted
		return r
	case apierrors.IsNotFound(err):
		r.outcome = notFound
		return r
	case apierrors.IsConflict(err):
		r.outcome = conflict
		return r
	}
	if o == opEvict {
		if name := budgetFromRefusal(err); name != "" {
			r.outcome, r.budgets = refused, []string{pod.Namespace + "/" + name}
			return r
		}
		if apierrors.IsTooManyRequests(err) || tooManyBudgets(err) {
			// The reply does not name the budget: find those that select the pod.
			list, lerr := dr.d.client.PolicyV1().PodDisruptionBudgets(pod.Namespace).List(ctx, metav1.ListOptions{})
			if lerr == nil {
				for _, name := range budgetsSelecting(pod, list.Items) {
					r.budgets = append(r.budgets, pod.Namespace+"/"+name)
				}
			}
			if len(r.budgets) > 0 {
				r.outcome = refused
				return r
			}
		}
	}
	r.outcome = failed
	return r
}

// evict posts a policy/v1 Eviction for the pod of that name and UID. client-go
// would retry a 429 that carries Retry-After by itself, for up to ten times its
// delay; the drain retries on its own schedule instead, woken early when the budget
// allows a disruption.
func (d *Drainer) evict(ctx context.Context, namespace, name string, uid types.UID) error {
	ev := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: name, Namespace: namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	}
	if rc, ok := d.client.PolicyV1().RESTClient().(*rest.RESTClient); ok && rc != nil {
		return rc.Post().AbsPath("/api/v1").Namespace(namespace).Resource("pods").Name(name).
			SubResource("eviction").Body(ev).MaxRetries(0).Do(ctx).Error()
	}
	return d.client.PolicyV1().Evictions(namespace).Evict(ctx, ev) // a fake clientset
}

// handle records the outcome of an attempt.
func (dr *drain) handle(r result) {
	dr.d.evictions.WithLabelValues(resultLabel(r)).Inc()
	t := r.t
	t.inflight = false
	dr.inflight--
	if dr.ctx.Err() != nil {
		return
	}
	log := dr.log.With("pod", t.key)
	switch r.outcome {
	case accepted:
		t.terminating, t.blockedBy, t.err = true, nil, nil
		if r.op == opDelete {
			dr.forced++
			log.Warn("pod deleted without eviction: drain timed out", "timeout", dr.d.opts.Timeout)
			dr.event(podRef(t.key, t.uid), corev1.EventTypeWarning, ReasonDrainForced, actionDelete,
				"Deleted pod %s without eviction: the drain did not finish within %s", t.key, dr.d.opts.Timeout)
		} else {
			log.Debug("pod evicted")
		}
		return
	case notFound:
		t.gone, t.blockedBy, t.err = true, nil, nil
		log.Debug("pod gone")
		return
	case conflict:
		// The pod of that name has another UID (ours is gone), or our view is stale.
		if obj, ok, _ := dr.pods.GetByKey(t.key); !ok || obj.(*corev1.Pod).UID != t.uid {
			t.gone, t.blockedBy, t.err = true, nil, nil
			log.Debug("pod gone")
			return
		}
	}
	t.failures++
	t.err = fmt.Errorf("evict pod %s: %w", t.key, r.err)
	if r.op == opDelete {
		t.err = fmt.Errorf("delete pod %s: %w", t.key, r.err)
	}
	t.errAt = time.Now()
	wait := backoff(t.failures, dr.d.opts.BackoffBase, dr.d.opts.BackoffMax)
	if s, ok := apierrors.SuggestsClientDelay(r.err); ok {
		wait = max(wait, min(time.Duration(s)*time.Second, dr.d.opts.BackoffMax))
	}
	t.nextTry = time.Now().Add(wait)
	if r.outcome != refused {
		t.blockedBy = nil
		if !t.warned {
			t.warned = true
			log.Warn("pod eviction failed; retrying", "err", r.err)
		} else {
			log.Debug("pod eviction failed; retrying", "err", r.err, "failures", t.failures, "wait", wait)
		}
		return
	}
	t.blockedBy = r.budgets
	for _, b := range r.budgets {
		log.Debug("pod eviction refused by disruption budget", "pdb", b, "failures", t.failures, "wait", wait)
		if dr.announced[b] {
			continue
		}
		dr.announced[b] = true
		log.Info("drain blocked by disruption budget", "pdb", b, "err", r.err)
		dr.event(budgetRef(b), corev1.EventTypeWarning, ReasonDrainBlocked, actionEvict,
			"PodDisruptionBudget %s refuses to let pod %s be evicted; retrying", b, t.key)
	}
}

// startForcing switches to deleting the pods left, Force's timeout having passed.
func (dr *drain) startForcing() {
	dr.forcing = true
	dr.log.Warn("drain timed out; deleting the pods left", "timeout", dr.d.opts.Timeout, "pods", dr.left())
	for _, t := range dr.targets {
		t.nextTry = time.Time{}
	}
}

// confirmGone lists the node's pods from the API server, not the watch, and reports
// whether every target is gone.
func (dr *drain) confirmGone() bool {
	list, err := dr.d.client.CoreV1().Pods(metav1.NamespaceAll).List(dr.ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", dr.node).String(),
	})
	if err != nil {
		if dr.ctx.Err() == nil {
			dr.listErr = fmt.Errorf("list the node's pods: %w", err)
			dr.log.Debug("cannot list the node's pods", "err", err)
		}
		return false
	}
	dr.listErr = nil
	uids := map[types.UID]bool{}
	for i := range list.Items {
		if !finished(&list.Items[i]) {
			uids[list.Items[i].UID] = true
		}
	}
	for _, t := range dr.targets {
		if uids[t.uid] {
			return false
		}
	}
	return true
}

// snapshot is the drain's progress as its run loop knows it.
func (dr *drain) snapshot() Progress {
	p := Progress{
		Node:    dr.node,
		Started: dr.started,
		Done:    dr.done,
		Pods:    len(dr.targets),
		Forced:  dr.forced,
		Err:     dr.listErr,
	}
	budgets := map[string]bool{}
	var errAt time.Time
	for _, t := range dr.targets {
		if t.unmanaged {
			p.Unmanaged++
		}
		if t.localData {
			p.LocalData++
		}
		if t.gone {
			continue
		}
		p.PodsLeft++
		p.Left = append(p.Left, t.key)
		for _, b := range t.blockedBy {
			budgets[b] = true
		}
		if t.err != nil && t.errAt.After(errAt) {
			p.Err, errAt = t.err, t.errAt
		}
	}
	for b := range budgets {
		p.BlockedBy = append(p.BlockedBy, b)
	}
	sort.Strings(p.BlockedBy)
	switch {
	case len(p.BlockedBy) == 0:
		dr.blockedSince = time.Time{}
	case dr.blockedSince.IsZero():
		dr.blockedSince = time.Now()
	}
	p.BlockedSince = dr.blockedSince
	return p
}

// succeed reports the node drained.
func (dr *drain) succeed() {
	p := dr.snapshot()
	p.Drained, p.Err = true, nil
	dr.d.publish(dr, p)
	dr.closeDone()
	took := time.Since(dr.started).Round(time.Millisecond)
	dr.log.Info("node drained", "pods", p.Pods, "forced", p.Forced, "took", took)
	dr.event(nil, corev1.EventTypeNormal, ReasonDrainSucceeded, actionDrain, "Node drained: %d pods gone in %s", p.Pods, took)
}

// fail gives up (FailurePolicy Release).
func (dr *drain) fail() {
	p := dr.snapshot()
	p.Failed = true
	if p.Err != nil {
		p.Err = fmt.Errorf("%w after %s with %d pods left; last error: %w", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft, p.Err)
	} else {
		p.Err = fmt.Errorf("%w after %s with %d pods left", ErrTimeout, dr.d.opts.Timeout, p.PodsLeft)
	}
	dr.d.publish(dr, p)
	dr.closeDone()
	dr.log.Warn("drain failed", "err", p.Err, "blockedBy", p.BlockedBy)
	dr.event(nil, corev1.EventTypeWarning, ReasonDrainFailed, actionDrain,
		"Drain gave up after %s with %d pods left (%s); the node is not rebooted", dr.d.opts.Timeout, p.PodsLeft, listNames(p.Left))
}

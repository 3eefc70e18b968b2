package evict

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

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
		if dr.phase == PhaseForcing && !now.Before(t.since.Add(dr.d.opts.Timeout)) {
			// A pod that arrived after the drain began gets its own Timeout of
			// evictions, its budget respected, before it is deleted.
			o = opDelete
		}
		dr.setPodPhase(t, podEvicting)
		dr.workers.Add(1)
		pod := t.pod
		go func() {
			defer dr.workers.Done()
			r := dr.attempt(t, pod, o)
			// More attempts than Parallelism may be in flight (a target the watch saw
			// go frees its slot before its reply is read), so the channel may be
			// full: a drain that has ended reads no more.
			select {
			case dr.results <- r:
			case <-dr.ctx.Done():
			}
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
	case apierrors.IsNotFound(err):
		r.outcome = notFound
	case apierrors.IsConflict(err):
		r.outcome = conflict
	case o == opEvict:
		r.outcome, r.budgets = dr.refusedBy(ctx, pod, err)
	default:
		r.outcome = failed
	}
	return r
}

// refusedBy names the budgets behind a refused eviction: the one the reply names,
// or, for the 500 about a pod that more than one budget selects, those of the
// namespace that select the pod. A 429 that names no budget comes from API Priority
// and Fairness (or another limit), not from a budget: a retry, blamed on nobody.
func (dr *drain) refusedBy(ctx context.Context, pod *corev1.Pod, err error) (outcome, []string) {
	if name := pdbFromRefusal(err); name != "" {
		return refused, []string{pod.Namespace + "/" + name}
	}
	if !tooManyPDBs(err) {
		return failed, nil
	}
	list, lerr := dr.d.client.PolicyV1().PodDisruptionBudgets(pod.Namespace).List(ctx, metav1.ListOptions{})
	if lerr != nil {
		return failed, nil
	}
	var budgets []string
	for _, name := range pdbsSelecting(pod, list.Items) {
		budgets = append(budgets, pod.Namespace+"/"+name)
	}
	if len(budgets) == 0 {
		return failed, nil
	}
	return refused, budgets
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

// handle records the outcome of an attempt: the target's next phase.
func (dr *drain) handle(r result) {
	dr.d.evictions.WithLabelValues(resultLabel(r)).Inc()
	t := r.t
	if dr.ctx.Err() != nil {
		dr.setPodPhase(t, podToEvict)
		return
	}
	log := dr.log.With("pod", t.key)
	switch r.outcome {
	case accepted:
		dr.setPodPhase(t, podTerminating)
		if r.op == opDelete {
			dr.forced++
			log.Warn("pod deleted without eviction: drain timed out", "timeout", dr.d.opts.Timeout)
			dr.eventf(podRef(t.key, t.uid), corev1.EventTypeWarning, ReasonDrainForced, actionDelete,
				"Deleted pod %s without eviction: the drain did not finish within %s", t.key, dr.d.opts.Timeout)
		} else {
			log.Debug("pod evicted")
		}
		return
	case notFound:
		dr.setPodPhase(t, podGone)
		return
	case conflict:
		// The pod of that name has another UID (ours is gone), or our view is stale.
		if obj, ok, _ := dr.pods.GetByKey(t.key); !ok || obj.(*corev1.Pod).UID != t.uid {
			dr.setPodPhase(t, podGone)
			return
		}
	}
	dr.refused(t, r, log)
}

// refused records a refused or failed attempt and when to try again.
func (dr *drain) refused(t *target, r result, log *slog.Logger) {
	now := dr.d.opts.Clock.Now()
	t.failures++
	verb := "evict"
	if r.op == opDelete {
		verb = "delete"
	}
	t.err = fmt.Errorf("%s pod %s: %w", verb, t.key, r.err)
	t.errAt = now
	wait := backoff(t.failures, dr.d.opts.BackoffBase, dr.d.opts.BackoffMax)
	if s, ok := apierrors.SuggestsClientDelay(r.err); ok {
		wait = max(wait, min(time.Duration(s)*time.Second, dr.d.opts.BackoffMax))
	}
	t.nextTry = now.Add(wait)
	t.blockedBy = r.budgets
	t.blocks = blocksOf(t, r)
	dr.setPodPhase(t, podRefused)
	switch {
	case r.outcome == refused:
		log.Debug("pod eviction refused by disruption budget", "pdb", r.budgets, "failures", t.failures, "wait", wait)
	case !t.warned:
		t.warned = true
		log.Warn("pod eviction failed; retrying", "err", r.err)
	default:
		log.Debug("pod eviction failed; retrying", "err", r.err, "failures", t.failures, "wait", wait)
	}
}

// blocksOf says what a refused or failed attempt means for the drain: a Block per
// refusing budget, one for a refusal of another kind, one for errors once they
// persist; none for an error that may pass.
func blocksOf(t *target, r result) []Block {
	msg := r.err.Error()
	var status apierrors.APIStatus
	if errors.As(r.err, &status) && status.Status().Message != "" {
		msg = status.Status().Message
	}
	if r.outcome == refused {
		out := make([]Block, 0, len(r.budgets))
		for _, b := range r.budgets {
			out = append(out, Block{Reason: BlockedByPDB, Pod: t.key, Object: b, Message: msg})
		}
		return out
	}
	if reason, ok := refusalReason(r.err); ok {
		return []Block{{Reason: reason, Pod: t.key, Message: msg}}
	}
	if t.failures >= FailuresBeforeBlocked {
		return []Block{{Reason: BlockedByErrors, Pod: t.key, Message: msg}}
	}
	return nil
}

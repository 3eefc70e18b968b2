package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Gate decides whether a node that holds nothing may take a slot now: the operator's
// policy (windows, pauses, blockers). It must answer from memory, without blocking.
// The policy package implements it.
type Gate interface {
	// Admit returns nil if the candidate may take a slot, else a *Refusal.
	Admit(c Candidate) error
}

// Candidate is what a Gate decides on.
type Candidate struct {
	// Node is the node asking, as the cache shows it.
	Node *corev1.Node
	// Group is the FleetLock group it asks in.
	Group string
	// Members are the other nodes whose last claim or hold was in Group, from the cache.
	Members []*corev1.Node
	// LastRelease is when a node of the group (Node included) last released a slot;
	// zero if none is known.
	LastRelease time.Time
}

// Refusal is a Gate's "not now". It matches its fleetlock sentinel with errors.Is, so
// the reply's kind names the reason.
type Refusal struct {
	// Reason is a CamelCase word for Events and the refusals metric, such as
	// RebootWindowClosed.
	Reason string
	// Err is the fleetlock sentinel, such as fleetlock.ErrWindowClosed.
	Err error
	// Msg says why, for Zincati's log and the Event.
	Msg string
	// Cause identifies the refusal's cause, stable while it lasts and different when
	// it changes, such as "RebootBlockedByAlert: NodeDown" (Msg may carry changing
	// details, such as an age). Events on refusals are keyed by it. Empty: Reason.
	Cause string
}

func (r *Refusal) Error() string { return r.Msg }

// Is makes errors.Is(r, r.Err) true.
func (r *Refusal) Is(target error) bool { return target == r.Err }

// byMember indexes the node cache by the group of a node's last claim or hold,
// whatever its state.
const byMember = "member"

func memberGroup(obj any) ([]string, error) {
	if n, ok := obj.(*corev1.Node); ok {
		if g := n.Annotations[AnnotationGroup]; g != "" {
			return []string{g}, nil
		}
	}
	return nil, nil
}

// admit asks the Gate whether the request's node may take a slot now.
func (r *request) admit(n *corev1.Node) error {
	if r.opts.Gate == nil {
		return nil
	}
	c := Candidate{Node: n, Group: r.group}
	if st := lockOf(n); st.Group == r.group {
		c.LastRelease = st.Released
	}
	objs, _ := r.nodes.GetIndexer().ByIndex(byMember, r.group)
	for _, o := range objs {
		m := o.(*corev1.Node)
		if m.Name == n.Name {
			continue
		}
		c.Members = append(c.Members, m)
		if rel := lockOf(m).Released; rel.After(c.LastRelease) {
			c.LastRelease = rel
		}
	}
	return r.opts.Gate.Admit(c)
}

// noteOutcome counts a pre-reboot refusal by its reason and posts an Event on the node
// when its reason differs from the last one posted, so that a node asking every few
// minutes for hours does not flood the Events.
func (l *Lock) noteOutcome(node string, err error) {
	var ref *Refusal
	if !errors.As(err, &ref) {
		if err == nil {
			l.refusedMu.Lock()
			delete(l.lastRefusal, node)
			l.refusedMu.Unlock()
		}
		return
	}
	l.refusals.WithLabelValues(ref.Reason).Inc()
	l.refusedMu.Lock()
	same := l.lastRefusal[node] == ref.Reason
	l.lastRefusal[node] = ref.Reason
	l.refusedMu.Unlock()
	if !same {
		l.event(node, corev1.EventTypeNormal, ref.Reason, "Refuse", ref.Msg)
	}
}

// event posts an Event on the node, if there is a recorder.
func (l *Lock) event(node, eventType, reason, action, note string) {
	if l.opts.Recorder == nil {
		return
	}
	l.opts.Recorder.Eventf(evict.NodeRef(node), nil, eventType, reason, action, "%s", note)
}

// awaitReady waits, from the cache, until the node is Ready, for at most Wait.
func (l *Lock) awaitReady(ctx context.Context, name string) error {
	deadline := time.Now().Add(l.opts.Wait)
	for {
		wake := l.changed.wait()
		obj, ok, _ := l.nodes.GetIndexer().GetByKey(name)
		if !ok {
			return ErrNotHolder // deleted, and its lock with it
		}
		if NodeReady(obj.(*corev1.Node)) {
			return nil
		}
		// Ready changes wake us; the timer is a fallback.
		err := l.sleep(ctx, 5*time.Second, deadline, wake, nil)
		if errors.Is(err, errExpired) {
			return fmt.Errorf("node %s is not Ready after its reboot; the slot stays held until it is: %w", name, fleetlock.ErrNodeNotReady)
		}
		if err != nil {
			return err
		}
	}
}

// ReadyCondition returns the node's Ready condition; ok is false if it has none.
func ReadyCondition(n *corev1.Node) (c corev1.NodeCondition, ok bool) {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c, true
		}
	}
	return c, false
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	c, _ := ReadyCondition(n)
	return c.Status == corev1.ConditionTrue
}

// readySince returns since when the node has been Ready; zero if it is not.
func readySince(n *corev1.Node) time.Time {
	if c, _ := ReadyCondition(n); c.Status == corev1.ConditionTrue {
		return c.LastTransitionTime.Time
	}
	return time.Time{}
}

// releaseStale releases every holder that rebooted (its boot ID changed since the
// grant) and has been Ready for longer than after without calling steady-state:
// its Zincati cannot reach us, and the slot would stay taken forever.
func (l *Lock) releaseStale(ctx context.Context, after time.Duration) {
	now := l.opts.Now()
	for _, obj := range l.nodes.GetIndexer().List() {
		n := obj.(*corev1.Node)
		st := lockOf(n)
		if !st.holding() || st.BootID == "" || n.Status.NodeInfo.BootID == st.BootID {
			continue
		}
		since := readySince(n)
		if since.IsZero() || now.Sub(since) < after || now.Sub(st.Since) < after {
			continue
		}
		log := l.log.With("node", n.Name, "group", st.Group)
		err := l.release(ctx, n, log, releaseStale)
		switch {
		case errors.Is(err, ErrNotHolder):
		case err != nil:
			log.Warn("cannot release a stale holder", "err", err)
		default:
			l.event(n.Name, corev1.EventTypeWarning, "StaleHolderReleased", "Release",
				fmt.Sprintf("rebooted and Ready for %s without calling steady-state (Zincati cannot reach reboot-manager?): slot of group %s released",
					now.Sub(since).Round(time.Second), st.Group))
		}
	}
}

// staleLoop runs releaseStale while StaleHolderAfter is set: every quarter of it,
// between 1 and 15 seconds.
func (l *Lock) staleLoop(ctx context.Context) {
	for {
		after := l.opts.StaleHolderAfter()
		t := time.NewTimer(min(max(after/4, time.Second), 15*time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if after := l.opts.StaleHolderAfter(); after > 0 && l.apiDown() == nil {
			l.releaseStale(ctx, after)
		}
	}
}

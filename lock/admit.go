package lock

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Candidate is what Policy.Admit decides on.
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

// Refusal is the policy's "not now". It matches its fleetlock sentinel with errors.Is,
// so the reply's kind names the reason.
type Refusal struct {
	// Reason is a CamelCase word for Events and the refusals metric, such as
	// RebootWindowClosed: RefusalReason(Err) unless set.
	Reason string
	// Err is the fleetlock sentinel, such as fleetlock.ErrWindowClosed.
	Err error
	// Msg says why, for Zincati's log and the Event.
	Msg string
	// Cause identifies the refusal's cause, stable while it lasts and different when
	// it changes, such as "RebootBlockedByAlert: NodeDown" (Msg may carry changing
	// details, such as an age). Events on refusals are keyed by it. Empty: Reason.
	Cause string
	// Warning posts the Event as a Warning rather than Normal.
	Warning bool
}

func (r *Refusal) Error() string { return r.Msg }

// Is makes errors.Is(r, r.Err) true.
func (r *Refusal) Is(target error) bool { return target == r.Err }

// byReleased indexes the node cache by the group of the slot a node last released.
const byReleased = "released"

func releasedGroup(obj any) ([]string, error) {
	if n, ok := obj.(*corev1.Node); ok {
		if st := lockOf(n); !st.Released.IsZero() && st.ReleasedGroup != "" {
			return []string{st.ReleasedGroup}, nil
		}
	}
	return nil, nil
}

// byMember indexes the node cache by the group of a node's last claim or hold (or
// wait), whatever its state.
const byMember = "member"

func memberGroup(obj any) ([]string, error) {
	if n, ok := obj.(*corev1.Node); ok {
		if g := n.Annotations[AnnotationGroup]; g != "" {
			return []string{g}, nil
		}
	}
	return nil, nil
}

// admit asks the policy whether the request's node may take a slot now, then checks
// the group order from the cache (orderCached).
func (a *acquisition) admit(n *corev1.Node) error {
	c := Candidate{Node: n, Group: a.group}
	if st := lockOf(n); st.ReleasedGroup == a.group {
		c.LastRelease = st.Released
	}
	idx := a.lock.nodes.GetIndexer()
	objs, _ := idx.ByIndex(byMember, a.group)
	for _, o := range objs {
		if m := o.(*corev1.Node); m.Name != n.Name {
			c.Members = append(c.Members, m)
		}
	}
	// The group's releases, by the group of the slot released: a member that now
	// waits in another group still counts here, and not there.
	objs, _ = idx.ByIndex(byReleased, a.group)
	for _, o := range objs {
		if m := o.(*corev1.Node); m.Name != n.Name && lockOf(m).Released.After(c.LastRelease) {
			c.LastRelease = lockOf(m).Released
		}
	}
	if err := a.lock.opts.Policy.Admit(c); err != nil {
		return err
	}
	return a.lock.orderCached(a.group)
}

package fleetsim

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/reboot-manager/reboot-manager/lock"
)

// orderTrack follows, for the group order (Group.After), which nodes hold, claim or
// wait, in the order the API server applied the changes: seq numbers the node events.
type orderTrack struct {
	seq      int
	blocking map[string]orderMark // node → since when it holds, claims or waits
	claims   map[string]claimMark // node → its current claim
	races    int
}

type orderMark struct {
	group, what string
	seq         int
}

type claimMark struct {
	since string // its rebootmanager/since: a rewritten claim is a new claim
	seq   int
}

func newOrderTrack() orderTrack {
	return orderTrack{blocking: map[string]orderMark{}, claims: map[string]claimMark{}}
}

// orderCheck runs when node n begins to hold a slot: no node of a group that n's goes
// after may hold, claim or wait since before n's claim (the lock reads them fresh
// after the claim, before the promotion). One that began after the claim is a race
// the lock cannot see, counted in Report.OrderRaces. c.mu is held.
func (c *checker) orderCheck(n *corev1.Node) {
	group := n.Annotations[lock.AnnotationGroup]
	after := c.f.after(group)
	if len(after) == 0 {
		return
	}
	o := &c.order
	claimed := o.seq // promoted without a claim seen: every earlier mark counts
	if cl, ok := o.claims[n.Name]; ok {
		claimed = cl.seq
	}
	for other, m := range o.blocking {
		if !slices.Contains(after, m.group) {
			continue
		}
		if m.seq < claimed {
			c.violations = append(c.violations, Violation{time.Now(), fmt.Sprintf(
				"group order: %s (%s, after %v) took a slot while %s (%s) %s since before its claim", n.Name, group, after, other, m.group, m.what)})
		} else {
			o.races++
			c.f.opts.Log("group order race: %s (%s) took a slot; %s (%s) %s since after its claim", n.Name, group, other, m.group, m.what)
		}
	}
}

// orderNote records the event's node: whether it holds, claims or waits now, since
// when, and its claim. c.mu is held.
func (c *checker) orderNote(ev watch.Event, n *corev1.Node) {
	o := &c.order
	o.seq++
	what := ""
	state := lock.State(n.Annotations[lock.AnnotationStatus])
	switch {
	case ev.Type == watch.Deleted:
	case state == lock.StateRebooting:
		what = "holds"
	case state == lock.StateClaiming:
		what = "claims"
	default:
		if w, ok := lock.WaiterOf(n); ok && !w.Stale(time.Now(), 0) {
			what = "waits"
		}
	}
	group := n.Annotations[lock.AnnotationGroup]
	if m, ok := o.blocking[n.Name]; what == "" {
		delete(o.blocking, n.Name)
	} else if !ok || m.group != group {
		o.blocking[n.Name] = orderMark{group: group, what: what, seq: o.seq}
	} else {
		m.what = what
		o.blocking[n.Name] = m
	}
	if state == lock.StateClaiming && ev.Type != watch.Deleted {
		if since := n.Annotations[lock.AnnotationSince]; o.claims[n.Name].since != since {
			o.claims[n.Name] = claimMark{since: since, seq: o.seq}
		}
	} else if state != lock.StateRebooting {
		delete(o.claims, n.Name)
	}
}

func (f *Fleet) after(group string) []string {
	for _, g := range f.opts.Groups {
		if g.Name == group {
			return g.After
		}
	}
	return nil
}

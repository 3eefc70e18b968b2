package lock

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// StateWaiting is how OrderBlockers reports a node that waits for a slot (WaiterOf):
// it is never recorded in AnnotationStatus, where such a node is Ready.
const StateWaiting State = "Waiting"

// OrderBlocker is a node that holds a group back by the group order.
type OrderBlocker struct {
	Node  string `json:"node"`
	Group string `json:"group"`
	// State is Rebooting (it holds a slot), Claiming or Waiting.
	State State `json:"state"`
}

// OrderBlockers returns the nodes of the groups in after that hold a slot, claim one
// (a claim younger than staleClaimAge) or wait for one (Queue with waiterTimeout: a
// stale waiter does not count), sorted by group, then node.
func OrderBlockers(after []string, nodes []*corev1.Node, now time.Time, waiterTimeout, staleClaimAge time.Duration) []OrderBlocker {
	if len(after) == 0 {
		return nil
	}
	var out []OrderBlocker
	seen := map[string]bool{}
	for _, n := range nodes {
		st := lockOf(n)
		if seen[n.Name] || !slices.Contains(after, st.Group) {
			continue
		}
		switch {
		case st.State == StateRebooting, st.State == StateClaiming && !staleClaim(st, now, staleClaimAge):
			out = append(out, OrderBlocker{Node: n.Name, Group: st.Group, State: st.State})
			seen[n.Name] = true
		}
	}
	for group, ws := range Queue(nodes, now, waiterTimeout) {
		if !slices.Contains(after, group) {
			continue
		}
		for _, w := range ws {
			if !seen[w.Node] {
				out = append(out, OrderBlocker{Node: w.Node, Group: group, State: StateWaiting})
				seen[w.Node] = true
			}
		}
	}
	slices.SortFunc(out, func(a, b OrderBlocker) int { return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Node, b.Node)) })
	return out
}

// orderRefusal is the refusal of a node of group, which goes after the groups in
// after, while blockers hold it back. Its Cause names the groups, not the nodes, so
// that one Event tells of a wait that outlasts many of them.
func orderRefusal(group string, after []string, blockers []OrderBlocker) *Refusal {
	const shown = 10
	var b strings.Builder
	for i, o := range blockers {
		if i == shown {
			fmt.Fprintf(&b, " and %d more", len(blockers)-shown)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%s, %s)", o.Node, o.Group, orderVerb[o.State])
	}
	quoted := make([]string, len(after))
	for i, a := range after {
		quoted[i] = strconv.Quote(a)
	}
	list := strings.Join(quoted, ", ")
	r := NewRefusal(fleetlock.ErrGroupOrder, fmt.Sprintf("group %q goes after %s: not done yet: %s", group, list, b.String()))
	r.Cause = r.Reason + ": " + list
	return r
}

var orderVerb = map[State]string{StateRebooting: "holds a slot", StateClaiming: "claims a slot", StateWaiting: "waits"}

// orderCached refuses a grant in group while a node of a group that it goes after
// (Policy.After) holds, claims or waits (OrderBlockers), as the cache shows them: the
// early check, before a claim, that costs no API request.
func (l *Lock) orderCached(group string) error {
	after := l.opts.Policy.After(group)
	if len(after) == 0 {
		return nil
	}
	var nodes []*corev1.Node
	for _, g := range after {
		objs, _ := l.nodes.GetIndexer().ByIndex(byMember, g)
		for _, o := range objs {
			nodes = append(nodes, o.(*corev1.Node))
		}
	}
	return l.orderVerdict(group, after, nodes)
}

// orderFresh is orderCached on a fresh read of the API server (two LISTs, by LabelWaiting
// then LabelLock): the last check before every promotion (a request's, a
// reservation's). A failed read refuses (api_unavailable). A group that goes after
// none costs nothing.
func (l *Lock) orderFresh(ctx context.Context, group string) error {
	after := l.opts.Policy.After(group)
	if len(after) == 0 {
		return nil
	}
	// The waiting nodes first: a waiter's claim keeps LabelWaiting until its
	// promotion, which sets LabelLock in the same write, so a node waiting at the
	// first LIST and holding at the second is seen by one of them. The other order
	// misses a node promoted between the two LISTs.
	var nodes []*corev1.Node
	for _, sel := range []string{LabelWaiting + "=true", LabelLock + "=true"} {
		list, err := l.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return apiError("list the nodes of the groups "+group+" goes after", err)
		}
		for i := range list.Items {
			nodes = append(nodes, &list.Items[i])
		}
	}
	return l.orderVerdict(group, after, nodes)
}

func (l *Lock) orderVerdict(group string, after []string, nodes []*corev1.Node) error {
	blockers := OrderBlockers(after, nodes, l.opts.Clock.Now(), l.opts.WaiterTimeout, l.opts.StaleClaimAge)
	if len(blockers) == 0 {
		return nil
	}
	return orderRefusal(group, after, blockers)
}

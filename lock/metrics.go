package lock

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
)

// Holder is a node that claims or holds the lock, as the cache shows it.
type Holder struct {
	Node  string
	Group string
	State State     // Claiming or Rebooting
	Since time.Time // when the state began
}

// Holders returns the nodes that claim or hold the lock, from the cache.
func (l *Lock) Holders() []Holder {
	var hs []Holder
	for _, obj := range l.nodes.GetIndexer().List() {
		if h, ok := HolderOf(obj.(*corev1.Node)); ok {
			hs = append(hs, h)
		}
	}
	return hs
}

// HolderOf reads the lock state recorded on a node: ok is false when the node neither
// claims nor holds.
func HolderOf(n *corev1.Node) (h Holder, ok bool) {
	st := lockOf(n)
	return Holder{Node: n.Name, Group: st.Group, State: st.State, Since: st.Since}, st.State != StateReady
}

var (
	slotsDesc = prometheus.NewDesc("rebootmanager_group_slots",
		"Nodes of the group that may reboot at once.", []string{"group"}, nil)
	holdersDesc = prometheus.NewDesc("rebootmanager_group_holders",
		"Nodes of the group that hold the reboot lock.", []string{"group"}, nil)
	claimsDesc = prometheus.NewDesc("rebootmanager_group_claims",
		"Nodes of the group whose pre-reboot request is claiming a slot.", []string{"group"}, nil)
	heldSinceDesc = prometheus.NewDesc("rebootmanager_lock_held_since_seconds",
		"When the node took the reboot lock (Unix time); one series per holder.", []string{"group", "node"}, nil)
)

// Describe implements prometheus.Collector.
func (l *Lock) Describe(ch chan<- *prometheus.Desc) {
	ch <- slotsDesc
	ch <- holdersDesc
	ch <- claimsDesc
	ch <- heldSinceDesc
	l.unmatched.Describe(ch)
	l.refusals.Describe(ch)
	l.releases.Describe(ch)
}

// Collect implements prometheus.Collector. Everything but the unmatched-ID counter is
// computed from the node cache at scrape time, so it is right after a restart and the
// same on every replica.
func (l *Lock) Collect(ch chan<- prometheus.Metric) {
	l.unmatched.Collect(ch)
	l.refusals.Collect(ch)
	l.releases.Collect(ch)
	if !l.nodes.HasSynced() {
		return
	}
	type counts struct{ holders, claims int }
	groups := map[string]*counts{"default": {}}
	for _, h := range l.Holders() {
		c := groups[h.Group]
		if c == nil {
			c = &counts{}
			groups[h.Group] = c
		}
		if h.State == StateClaiming {
			c.claims++
			continue
		}
		c.holders++
		ch <- prometheus.MustNewConstMetric(heldSinceDesc, prometheus.GaugeValue,
			float64(h.Since.UnixNano())/1e9, h.Group, h.Node)
	}
	for g, c := range groups {
		ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(l.slots(g)), g)
		ch <- prometheus.MustNewConstMetric(holdersDesc, prometheus.GaugeValue, float64(c.holders), g)
		ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(c.claims), g)
	}
}

package lock

import (
	"errors"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

func newUnmatchedCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_unmatched_ids_total",
		Help: "Requests whose Zincati ID matched no node (reason unknown) or several (reason ambiguous).",
	}, []string{"endpoint", "reason"})
}

func newRefusalsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_refusals_total",
		Help: "Pre-reboot requests refused by the operator's policy (window, pause, hold, gap, blockers) or for an uncordoned holder, by group and reason.",
	}, []string{"group", "reason"})
}

func newReleasesCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_releases_total",
		Help: "Slots released by steady-state, by group and by whether the node's boot ID had changed (rebooted true or false).",
	}, []string{"group", "rebooted"})
}

func newReservationsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_reservations_total",
		Help: "Slots reserved for a waiting node with no request open, by group and outcome: reserved (the node promoted and its drain started), taken (its pre-reboot came) or given_back (it did not by the deadline).",
	}, []string{"group", "outcome"})
}

// groupLabel is group as a metric label value: a configured group, else
// "unconfigured", so that clients cannot grow the series by naming groups.
func (l *Lock) groupLabel(group string) string {
	if slices.Contains(l.opts.Policy.Groups(), group) {
		return group
	}
	return "unconfigured"
}

func (l *Lock) countUnmatched(endpoint string, err error) {
	switch {
	case errors.Is(err, fleetlock.ErrUnknownNode):
		l.unmatched.WithLabelValues(endpoint, "unknown").Inc()
	case errors.Is(err, fleetlock.ErrAmbiguousNode):
		l.unmatched.WithLabelValues(endpoint, "ambiguous").Inc()
	}
}

var (
	slotsDesc = prometheus.NewDesc("rebootmanager_group_slots",
		"Nodes of the group that may reboot at once.", []string{"group"}, nil)
	holdersDesc = prometheus.NewDesc("rebootmanager_group_holders",
		"Nodes of the group that hold the reboot lock.", []string{"group"}, nil)
	claimsDesc = prometheus.NewDesc("rebootmanager_group_claims",
		"Nodes of the group whose pre-reboot request is claiming a slot.", []string{"group"}, nil)
	waitersDesc = prometheus.NewDesc("rebootmanager_group_waiters",
		"Nodes of the group that wait for a slot (the waiting marks of lock.Queue; a waiter that stopped asking is not counted).", []string{"group"}, nil)
	waitingSinceDesc = prometheus.NewDesc("rebootmanager_group_waiting_since_timestamp_seconds",
		"When the longest current wait of a node of the group began (Unix time); absent while none waits.", []string{"group"}, nil)
	heldSinceDesc = prometheus.NewDesc("rebootmanager_lock_held_since_timestamp_seconds",
		"When the node took the reboot lock (Unix time); one series per holder.", []string{"group", "node"}, nil)
)

// Describe implements prometheus.Collector.
func (l *Lock) Describe(ch chan<- *prometheus.Desc) {
	ch <- slotsDesc
	ch <- holdersDesc
	ch <- claimsDesc
	ch <- waitersDesc
	ch <- waitingSinceDesc
	ch <- heldSinceDesc
	l.unmatched.Describe(ch)
	l.refusals.Describe(ch)
	l.releases.Describe(ch)
	l.reservations.Describe(ch)
}

// Collect implements prometheus.Collector. Everything but the unmatched-ID counter is
// computed from the node cache at scrape time, so it is right after a restart and the
// same on every replica.
func (l *Lock) Collect(ch chan<- prometheus.Metric) {
	l.unmatched.Collect(ch)
	l.refusals.Collect(ch)
	l.releases.Collect(ch)
	l.reservations.Collect(ch)
	if !l.nodes.HasSynced() {
		return
	}
	type counts struct{ holders, claims, waiters int }
	groups := map[string]*counts{}
	for _, g := range l.opts.Policy.Groups() {
		groups[g] = &counts{} // every configured group, holders or not
	}
	for _, h := range l.Holders() { // and the groups of existing nodes' claims and holds
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
	for g, ws := range Queue(l.Nodes(), l.opts.Clock.Now(), l.opts.WaiterTimeout) { // and of waiters
		c := groups[g]
		if c == nil {
			c = &counts{}
			groups[g] = c
		}
		c.waiters = len(ws)
		first := slices.MinFunc(ws, func(a, b Waiter) int { return a.Since.Compare(b.Since) })
		ch <- prometheus.MustNewConstMetric(waitingSinceDesc, prometheus.GaugeValue,
			float64(first.Since.UnixNano())/1e9, g)
	}
	for g, c := range groups {
		ch <- prometheus.MustNewConstMetric(waitersDesc, prometheus.GaugeValue, float64(c.waiters), g)
		ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(l.slots(g)), g)
		ch <- prometheus.MustNewConstMetric(holdersDesc, prometheus.GaugeValue, float64(c.holders), g)
		ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(c.claims), g)
	}
}

package evict

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	drainsDesc = prometheus.NewDesc("rebootmanager_drains",
		"Drains this process knows, by state: running, drained, failed or nodeGone (the Node was deleted or replaced).", []string{"state"}, nil)
	podsLeftDesc = prometheus.NewDesc("rebootmanager_drain_pods_left",
		"Pods still to leave the node, per running drain.", []string{"node"}, nil)
	volumesDesc = prometheus.NewDesc("rebootmanager_drain_volumes_attached",
		"VolumeAttachments still attached to the node once its pods are gone, per drain waiting for them.", []string{"node"}, nil)
	blockedDesc = prometheus.NewDesc("rebootmanager_drain_blocked_since_timestamp_seconds",
		"When the drain of the node became blocked for this reason (Unix time), per blocked drain and reason: "+
			"PodDisruptionBudget, AdmissionDenied, NamespaceTerminating, Forbidden, EvictionErrors, PodsReturning, VolumesAttached.",
		[]string{"node", "reason"}, nil)
)

// newEvictionsCounter counts eviction (and, under Force, deletion) answers by result.
func newEvictionsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_evictions_total",
		Help: "Answers to eviction requests by result: accepted, gone (the pod was already gone or replaced), refused (by a PodDisruptionBudget), failed, forced (deleted under the Force policy).",
	}, []string{"result"})
}

// resultLabel is the evictions counter's label for an attempt's outcome.
func resultLabel(r result) string {
	switch {
	case r.outcome == accepted && r.op == opDelete:
		return "forced"
	case r.outcome == accepted:
		return "accepted"
	case r.outcome == notFound || r.outcome == conflict:
		return "gone"
	case r.outcome == refused:
		return "refused"
	default:
		return "failed"
	}
}

// Describe implements prometheus.Collector.
func (d *Drainer) Describe(ch chan<- *prometheus.Desc) {
	ch <- drainsDesc
	ch <- podsLeftDesc
	ch <- blockedDesc
	ch <- volumesDesc
	d.evictions.Describe(ch)
}

// Collect implements prometheus.Collector: the drain gauges are computed from the
// drains' progress at scrape time.
func (d *Drainer) Collect(ch chan<- prometheus.Metric) {
	d.evictions.Collect(ch)
	states := map[string]int{"running": 0, "drained": 0, "failed": 0, "nodeGone": 0}
	for _, p := range d.Drains() {
		switch {
		case p.Drained:
			states["drained"]++
			continue
		case p.Failed:
			states["failed"]++
			continue
		case p.Phase == PhaseNodeGone:
			states["nodeGone"]++
			continue
		}
		states["running"]++
		ch <- prometheus.MustNewConstMetric(podsLeftDesc, prometheus.GaugeValue, float64(p.PodsLeft), p.Node)
		if p.Phase == PhaseWaitingForVolumes {
			ch <- prometheus.MustNewConstMetric(volumesDesc, prometheus.GaugeValue, float64(len(p.VolumesAttached)), p.Node)
		}
		since := map[BlockReason]time.Time{}
		for _, b := range p.Blocks {
			if s, ok := since[b.Reason]; !ok || b.Since.Before(s) {
				since[b.Reason] = b.Since
			}
		}
		for reason, s := range since {
			ch <- prometheus.MustNewConstMetric(blockedDesc, prometheus.GaugeValue, float64(s.UnixNano())/1e9, p.Node, string(reason))
		}
	}
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(drainsDesc, prometheus.GaugeValue, float64(n), s)
	}
}

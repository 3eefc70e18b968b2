package policy

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	pausedDesc = prometheus.NewDesc("rebootmanager_paused",
		"1 while the pause ConfigMap exists (no new reboot is granted), else 0.", nil, nil)
	windowOpenDesc = prometheus.NewDesc("rebootmanager_window_open",
		"1 while a reboot window of the group is open (or it has none), else 0; for the default group and each configured one.", []string{"group"}, nil)
	blockingDesc = prometheus.NewDesc("rebootmanager_blocker_active",
		"1 while the blocker refuses new grants (it found something, its check failed, or it is stale), else 0; per configured blocker (alerts, pods).", []string{"blocker"}, nil)
)

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) {
	ch <- pausedDesc
	ch <- windowOpenDesc
	ch <- blockingDesc
}

// Collect implements prometheus.Collector, from the state in force at scrape time.
func (p *Policy) Collect(ch chan<- prometheus.Metric) {
	cfg := p.Config()
	now := p.opts.Now()
	_, paused := p.Paused()
	ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, b2f(paused))
	for _, g := range cfg.GroupNames() {
		ch <- prometheus.MustNewConstMetric(windowOpenDesc, prometheus.GaugeValue, b2f(cfg.Group(g).WindowOpen(now)), g)
	}
	if cfg.Blockers.Alerts != nil {
		ch <- prometheus.MustNewConstMetric(blockingDesc, prometheus.GaugeValue, b2f(p.alertsBlock(cfg, now) != nil), "alerts")
	}
	if len(cfg.Blockers.Pods) > 0 {
		// Cluster-scoped pods, or a failed check; node-scoped ones block single nodes.
		ch <- prometheus.MustNewConstMetric(blockingDesc, prometheus.GaugeValue, b2f(p.podsBlock(cfg, "", now) != nil), "pods")
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

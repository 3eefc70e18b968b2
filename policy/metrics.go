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
	checkFailuresDesc = prometheus.NewDesc("rebootmanager_blocker_check_failures_total",
		"Checks of the blocker without a clean answer (an error, a timeout, a partial answer); per configured blocker (alerts, pods).", []string{"blocker"}, nil)
	checkSuccessDesc = prometheus.NewDesc("rebootmanager_blocker_last_success_timestamp_seconds",
		"When the blocker's check last answered cleanly (Unix seconds; 0: never); per configured blocker (alerts, pods).", []string{"blocker"}, nil)
)

var (
	configSuccessDesc = prometheus.NewDesc("rebootmanager_config_last_reload_successful",
		"1 while the policy file, as last read, is the policy in force; 0 while it cannot be read or is invalid (the last valid version stays in force). Only with --config.", nil, nil)
	configSuccessTimeDesc = prometheus.NewDesc("rebootmanager_config_last_reload_success_timestamp_seconds",
		"When the policy in force was read from the policy file (Unix seconds). Only with --config.", nil, nil)
	configFailuresDesc = prometheus.NewDesc("rebootmanager_config_reload_failures_total",
		"Versions of the policy file that could not be read or were invalid; each counts once, however many checks see it. Only with --config.", nil, nil)
)

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) {
	ch <- pausedDesc
	ch <- windowOpenDesc
	ch <- blockingDesc
	ch <- checkFailuresDesc
	ch <- checkSuccessDesc
	ch <- configSuccessDesc
	ch <- configSuccessTimeDesc
	ch <- configFailuresDesc
}

// Collect implements prometheus.Collector, from the state in force at scrape time.
func (p *Policy) Collect(ch chan<- prometheus.Metric) {
	cfg := p.Config()
	now := p.opts.Now()
	if p.opts.ConfigState != nil {
		st := p.opts.ConfigState()
		ch <- prometheus.MustNewConstMetric(configSuccessDesc, prometheus.GaugeValue, b2f(st.Error == ""))
		ch <- prometheus.MustNewConstMetric(configSuccessTimeDesc, prometheus.GaugeValue, float64(st.Loaded.UnixNano())/1e9)
		ch <- prometheus.MustNewConstMetric(configFailuresDesc, prometheus.CounterValue, float64(st.Failures))
	}
	_, paused := p.Paused()
	ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, b2f(paused))
	for _, g := range cfg.GroupNames() {
		ch <- prometheus.MustNewConstMetric(windowOpenDesc, prometheus.GaugeValue, b2f(cfg.Group(g).WindowOpen(now)), g)
	}
	if cfg.Blockers.Alerts != nil {
		ch <- prometheus.MustNewConstMetric(blockingDesc, prometheus.GaugeValue, b2f(p.alertsBlock(cfg, now) != nil), blockerAlerts)
		p.collectChecks(ch, &p.alerts)
	}
	if len(cfg.Blockers.Pods) > 0 {
		// Cluster-scoped pods, or a failed check; node-scoped ones block single nodes.
		ch <- prometheus.MustNewConstMetric(blockingDesc, prometheus.GaugeValue, b2f(p.podsBlock(cfg, "", now) != nil), blockerPods)
		p.collectChecks(ch, &p.pods)
	}
}

// collectChecks sends a blocker's check metrics.
func (p *Policy) collectChecks(ch chan<- prometheus.Metric, pr *probe) {
	st := p.last(pr)
	success := 0.0
	if !st.lastSuccess.IsZero() {
		success = float64(st.lastSuccess.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(checkFailuresDesc, prometheus.CounterValue, float64(st.failures), st.name)
	ch <- prometheus.MustNewConstMetric(checkSuccessDesc, prometheus.GaugeValue, success, st.name)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

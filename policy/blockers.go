package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// staleAfter is how many intervals a check's result stays good: past that (the
// checks stalled), the blocker blocks, as a failed check does.
const staleAfter = 3

// probeLoop runs each configured check when it is due, until ctx ends. The
// configuration is read at every turn, so blockers added or removed by a reload take
// effect within a second.
func (p *Policy) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		cfg := p.Config()
		now := p.opts.Now()
		if a := cfg.Blockers.Alerts; a != nil && p.due(&p.alerts, a.Interval.Duration, now) {
			r := p.checkAlerts(ctx, a)
			p.store(&p.alerts, r, "alerts")
		}
		if len(cfg.Blockers.Pods) > 0 && p.due(&p.pods, cfg.Blockers.PodsInterval.Duration, now) {
			r := p.checkPods(ctx, cfg.Blockers.Pods)
			p.store(&p.pods, r, "pods")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Policy) due(r *probeResult, every time.Duration, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Sub(r.at) >= every
}

// store keeps a check's result and logs when what it finds changes.
func (p *Policy) store(r *probeResult, next probeResult, what string) {
	p.mu.Lock()
	prev := *r
	*r = next
	p.mu.Unlock()
	switch {
	case next.err != nil && (prev.err == nil || prev.err.Error() != next.err.Error()):
		p.log.Warn("blocker check failed: new reboots blocked", "blocker", what, "err", next.err)
	case next.err == nil && strings.Join(next.found, ",") != strings.Join(prev.found, ","):
		p.log.Info("blocker changed", "blocker", what, "found", next.found)
	}
}

// alertsBlock refuses while the last alerts check found a firing alert, failed, or
// is too old.
func (p *Policy) alertsBlock(cfg *Config, now time.Time) error {
	a := cfg.Blockers.Alerts
	if a == nil {
		return nil
	}
	p.mu.Lock()
	r := p.alerts
	p.mu.Unlock()
	switch {
	case r.at.IsZero():
		return refuse("RebootBlockedByAlert", fleetlock.ErrAlertFiring, "alerts not checked yet at %s", a.URL)
	case now.Sub(r.at) > staleAfter*a.Interval.Duration:
		return refuse("RebootBlockedByAlert", fleetlock.ErrAlertFiring, "alerts last checked %s ago", now.Sub(r.at).Round(time.Second))
	case r.err != nil:
		return refuse("RebootBlockedByAlert", fleetlock.ErrAlertFiring, "cannot check alerts (blocking until it can): %v", r.err)
	case len(r.found) > 0:
		return refuse("RebootBlockedByAlert", fleetlock.ErrAlertFiring, "alerts firing: %s", strings.Join(r.found, ", "))
	}
	return nil
}

// podsBlock refuses while the last pods check found a blocking pod on the cluster or
// on node, failed, or is too old.
func (p *Policy) podsBlock(cfg *Config, node string, now time.Time) error {
	if len(cfg.Blockers.Pods) == 0 {
		return nil
	}
	p.mu.Lock()
	r := p.pods
	p.mu.Unlock()
	switch {
	case r.at.IsZero():
		return refuse("RebootBlockedByPods", fleetlock.ErrPodsBlocking, "blocking pods not checked yet")
	case now.Sub(r.at) > staleAfter*cfg.Blockers.PodsInterval.Duration:
		return refuse("RebootBlockedByPods", fleetlock.ErrPodsBlocking, "blocking pods last checked %s ago", now.Sub(r.at).Round(time.Second))
	case r.err != nil:
		return refuse("RebootBlockedByPods", fleetlock.ErrPodsBlocking, "cannot check for blocking pods (blocking until it can): %v", r.err)
	case len(r.found) > 0:
		return refuse("RebootBlockedByPods", fleetlock.ErrPodsBlocking, "blocking pods exist: %s", strings.Join(r.found, ", "))
	case len(r.byNode[node]) > 0:
		return refuse("RebootBlockedByPods", fleetlock.ErrPodsBlocking, "blocking pods on node %s: %s", node, strings.Join(r.byNode[node], ", "))
	}
	return nil
}

// prometheusAlerts is the part of Prometheus' GET /api/v1/alerts reply we read.
type prometheusAlerts struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	} `json:"data"`
}

// checkAlerts asks Prometheus for its alerts and keeps the firing ones that match.
func (p *Policy) checkAlerts(ctx context.Context, a *AlertsBlocker) probeResult {
	r := probeResult{at: p.opts.Now()}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := strings.TrimSuffix(a.URL, "/") + "/api/v1/alerts"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := p.opts.HTTPClient.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		r.err = fmt.Errorf("GET %s: %w", url, err)
		return r
	}
	var reply prometheusAlerts
	if err := json.Unmarshal(body, &reply); err != nil {
		r.err = fmt.Errorf("GET %s: %s, not an alerts reply: %w", url, resp.Status, err)
		return r
	}
	if resp.StatusCode != http.StatusOK || reply.Status != "success" {
		r.err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, reply.Error)
		return r
	}
	seen := map[string]bool{}
	for _, al := range reply.Data.Alerts {
		if al.State != "firing" || !matches(a, al.Labels) {
			continue
		}
		name := al.Labels["alertname"]
		if !seen[name] {
			seen[name] = true
			r.found = append(r.found, name)
		}
	}
	sort.Strings(r.found)
	return r
}

func matches(a *AlertsBlocker, labels map[string]string) bool {
	for label, re := range a.match {
		v, ok := labels[label]
		if !ok || !re.MatchString(v) {
			return false
		}
	}
	return true
}

// checkPods lists the pods of every pod blocker, from the API server's watch cache.
func (p *Policy) checkPods(ctx context.Context, blockers []PodsBlocker) probeResult {
	r := probeResult{at: p.opts.Now(), byNode: map[string][]string{}}
	for _, b := range blockers {
		list, err := p.opts.Client.CoreV1().Pods(b.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: b.selector.String(), ResourceVersion: "0",
		})
		if err != nil {
			r.err = fmt.Errorf("list pods %s: %w", b.Selector, err)
			return r
		}
		for _, pod := range list.Items {
			if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
				continue
			}
			name := pod.Namespace + "/" + pod.Name
			if b.Scope == ScopeNode {
				if pod.Spec.NodeName != "" {
					r.byNode[pod.Spec.NodeName] = append(r.byNode[pod.Spec.NodeName], name)
				}
				continue
			}
			r.found = append(r.found, name)
		}
	}
	sort.Strings(r.found)
	return r
}

// BlockerState is a configured blocker as its last check left it.
type BlockerState struct {
	// Name is alerts, pods or notReadyNodes.
	Name string `json:"name"`
	// Active is true while it refuses new grants (for pods and notReadyNodes: some).
	Active bool `json:"active"`
	// Detail says what it found, or why it blocks.
	Detail string `json:"detail,omitempty"`
}

// Blockers returns the configured blockers and their state. The not-Ready blocker
// is evaluated per group at each request; here it is only listed.
func (p *Policy) Blockers() []BlockerState {
	cfg := p.Config()
	now := p.opts.Now()
	var out []BlockerState
	state := func(name string, err error) {
		b := BlockerState{Name: name, Active: err != nil}
		if err != nil {
			b.Detail = err.Error()
		}
		out = append(out, b)
	}
	if cfg.Blockers.Alerts != nil {
		state("alerts", p.alertsBlock(cfg, now))
	}
	if len(cfg.Blockers.Pods) > 0 {
		err := p.podsBlock(cfg, "", now)
		p.mu.Lock()
		var onNodes []string
		for node, pods := range p.pods.byNode {
			onNodes = append(onNodes, node+": "+strings.Join(pods, ", "))
		}
		p.mu.Unlock()
		sort.Strings(onNodes)
		b := BlockerState{Name: "pods", Active: err != nil || len(onNodes) > 0}
		if err != nil {
			b.Detail = err.Error()
		} else if len(onNodes) > 0 {
			b.Detail = "blocking pods on nodes " + strings.Join(onNodes, "; ")
		}
		out = append(out, b)
	}
	if cfg.Blockers.NotReadyNodes {
		out = append(out, BlockerState{Name: "notReadyNodes", Detail: "checked per group at each request"})
	}
	return out
}

// CheckBlockers runs every configured check once, now, and waits for the results:
// for a one-shot status outside the server.
func (p *Policy) CheckBlockers(ctx context.Context) {
	cfg := p.Config()
	if a := cfg.Blockers.Alerts; a != nil {
		p.store(&p.alerts, p.checkAlerts(ctx, a), "alerts")
	}
	if len(cfg.Blockers.Pods) > 0 {
		p.store(&p.pods, p.checkPods(ctx, cfg.Blockers.Pods), "pods")
	}
}

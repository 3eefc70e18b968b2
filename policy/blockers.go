package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	promconfig "github.com/prometheus/common/config"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// staleAfter is how many intervals, beyond the time a check may take, its result stays
// good: past that (the checks stalled), the blocker blocks, as a failed check does.
const staleAfter = 3

// Blocker names, as in metrics and status.
const (
	blockerAlerts = "alerts"
	blockerPods   = "pods"
)

// probe is one blocker's background check and its last result. At most one check of
// a blocker runs at a time; its result is stamped when it arrives.
type probe struct {
	name        string
	running     bool
	started     time.Time // when the last check started
	last        probeResult
	lastSuccess time.Time // when the last clean answer arrived
	failures    uint64    // checks without a clean answer
}

// probeResult is what a background check found, and when.
type probeResult struct {
	at     time.Time // when the answer arrived
	err    error     // no clean answer: the check failed, or the answer was partial
	found  []string  // firing alerts or blocking pods (cluster scope), sorted
	byNode map[string][]string
}

// probeLoop starts each configured check when it is due and none of its runs is under
// way, until ctx ends. The configuration is read at every turn, so blockers added or
// removed by a reload take effect within a second.
func (p *Policy) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		cfg := p.Config()
		if a := cfg.Blockers.Alerts; a != nil {
			p.startCheck(ctx, &p.alerts, a.Interval.Duration, a.Timeout.Duration, false, func(ctx context.Context) probeResult {
				return p.checkAlerts(ctx, a)
			})
		}
		if pods := cfg.Blockers.Pods; len(pods) > 0 {
			p.startCheck(ctx, &p.pods, cfg.Blockers.PodsInterval.Duration, DefaultCheckTimeout, false, func(ctx context.Context) probeResult {
				return p.checkPods(ctx, pods)
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startCheck runs check, for at most timeout, in the background (or, with wait, now)
// if no check of the blocker is under way and the last started at least every ago; it
// stores the result when it arrives. It reports whether it started one.
func (p *Policy) startCheck(ctx context.Context, pr *probe, every, timeout time.Duration, wait bool,
	check func(context.Context) probeResult) bool {
	p.mu.Lock()
	now := p.opts.Now()
	if pr.running || (!wait && now.Sub(pr.started) < every) {
		p.mu.Unlock()
		return false
	}
	pr.running, pr.started = true, now
	p.mu.Unlock()
	run := func() {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		r := check(cctx)
		r.at = p.opts.Now() // stamped when the answer arrives
		p.store(pr, r)
	}
	if wait {
		run()
	} else {
		go run()
	}
	return true
}

// store keeps a check's result and logs when what it finds changes.
func (p *Policy) store(pr *probe, next probeResult) {
	p.mu.Lock()
	prev := pr.last
	pr.last, pr.running = next, false
	if next.err != nil {
		pr.failures++
	} else {
		pr.lastSuccess = next.at
	}
	p.mu.Unlock()
	switch {
	case next.err != nil && (prev.err == nil || prev.err.Error() != next.err.Error()):
		p.log.Warn("blocker check failing: new reboots blocked", "blocker", pr.name, "err", next.err)
	case next.err == nil && prev.err != nil:
		p.log.Info("blocker check answers again", "blocker", pr.name, "found", next.found)
	case next.err == nil && strings.Join(next.found, ",") != strings.Join(prev.found, ","):
		p.log.Info("blocker changed", "blocker", pr.name, "found", next.found)
	}
}

// last returns a copy of the probe's state.
func (p *Policy) last(pr *probe) probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	return *pr
}

// checkFailing is the refusal of a blocker whose check has no clean answer: it
// blocks, under its own reply kind and reason, never as a finding.
func checkFailing(blocker, reason, cause string, format string, args ...any) error {
	return refuse(reason, fleetlock.ErrBlockerCheckFailing, cause, blocker+" check failing: "+format, args...)
}

// freshness refuses while a probe has no clean answer, none yet, or its last is too
// old: older than staleAfter intervals past the time a check may take.
func freshness(pr probe, blocker, reason string, every, timeout time.Duration, now time.Time) error {
	switch {
	case pr.last.at.IsZero():
		return checkFailing(blocker, reason, "not checked yet", "not checked yet")
	case now.Sub(pr.last.at) > staleAfter*every+timeout:
		return checkFailing(blocker, reason, "stale", "last answer %s ago", now.Sub(pr.last.at).Round(time.Second))
	case pr.last.err != nil:
		return checkFailing(blocker, reason, pr.last.err.Error(), "%v", pr.last.err)
	}
	return nil
}

// Refusal reasons of the blockers.
const (
	reasonAlert             = "RebootBlockedByAlert"
	reasonAlertsCheckFailed = "RebootAlertsCheckFailing"
	reasonPods              = "RebootBlockedByPods"
	reasonPodsCheckFailed   = "RebootPodsCheckFailing"
)

// alertsBlock refuses while the last alerts check found a firing alert, had no clean
// answer, or is too old.
func (p *Policy) alertsBlock(cfg *Config, now time.Time) error {
	a := cfg.Blockers.Alerts
	if a == nil {
		return nil
	}
	pr := p.last(&p.alerts)
	if err := freshness(pr, blockerAlerts, reasonAlertsCheckFailed, a.Interval.Duration, a.Timeout.Duration, now); err != nil {
		return err
	}
	if len(pr.last.found) > 0 {
		found := strings.Join(pr.last.found, ", ")
		return refuse(reasonAlert, fleetlock.ErrAlertFiring, found, "alerts firing: %s", found)
	}
	return nil
}

// podsBlock refuses while the last pods check found a blocking pod on the cluster or
// on node, had no clean answer, or is too old.
func (p *Policy) podsBlock(cfg *Config, node string, now time.Time) error {
	if len(cfg.Blockers.Pods) == 0 {
		return nil
	}
	pr := p.last(&p.pods)
	if err := freshness(pr, blockerPods, reasonPodsCheckFailed, cfg.Blockers.PodsInterval.Duration, DefaultCheckTimeout, now); err != nil {
		return err
	}
	if found := pr.last.found; len(found) > 0 {
		s := strings.Join(found, ", ")
		return refuse(reasonPods, fleetlock.ErrPodsBlocking, s, "blocking pods exist: %s", s)
	}
	if found := pr.last.byNode[node]; len(found) > 0 {
		s := strings.Join(found, ", ")
		return refuse(reasonPods, fleetlock.ErrPodsBlocking, s, "blocking pods on node %s: %s", node, s)
	}
	return nil
}

// prometheusAlerts is the part of Prometheus' GET /api/v1/alerts reply we read.
type prometheusAlerts struct {
	Status   string   `json:"status"`
	Error    string   `json:"error"`
	Warnings []string `json:"warnings"`
	Data     struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	} `json:"data"`
}

// alertsClient returns the HTTP client of the alerts blocker a, built from its
// configuration once per version of the policy.
func (p *Policy) alertsClient(a *AlertsBlocker) (*http.Client, error) {
	p.clientMu.Lock()
	defer p.clientMu.Unlock()
	if p.clientFor == a && p.client != nil {
		return p.client, nil
	}
	hc, err := promconfig.NewClientFromConfig(a.client, "reboot-manager-alerts",
		promconfig.WithUserAgent("reboot-manager"))
	if err != nil {
		return nil, fmt.Errorf("HTTP client: %w", err)
	}
	p.client, p.clientFor = hc, a
	return hc, nil
}

// checkAlerts asks Prometheus for its alerts and keeps the firing ones that match. A
// reply with warnings (partial data) is no clean answer. Errors show the URL
// redacted.
func (p *Policy) checkAlerts(ctx context.Context, a *AlertsBlocker) probeResult {
	var r probeResult
	shown := "GET " + strings.TrimSuffix(a.RedactedURL(), "/") + "/api/v1/alerts"
	hc, err := p.alertsClient(a)
	if err != nil {
		r.err = err
		return r
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(a.URL, "/")+"/api/v1/alerts", nil)
	if err != nil {
		r.err = fmt.Errorf("%s: %w", shown, redactURLError(err))
		return r
	}
	resp, err := hc.Do(req)
	if err != nil {
		r.err = fmt.Errorf("%s: %w", shown, redactURLError(err))
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		r.err = fmt.Errorf("%s: %w", shown, redactURLError(err))
		return r
	}
	var reply prometheusAlerts
	if err := json.Unmarshal(body, &reply); err != nil {
		r.err = fmt.Errorf("%s: %s, not an alerts reply", shown, resp.Status)
		return r
	}
	switch {
	case resp.StatusCode != http.StatusOK || reply.Status != "success":
		r.err = fmt.Errorf("%s: %s: %s", shown, resp.Status, reply.Error)
		return r
	case len(reply.Warnings) > 0:
		r.err = fmt.Errorf("%s: %w, Prometheus warns: %s", shown, errPartialData, strings.Join(reply.Warnings, "; "))
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

// errPartialData marks a Prometheus answer that carries warnings: its data may be
// missing alerts (a rule source down), so it is no clean answer.
var errPartialData = errors.New("partial data")

// redactURLError drops the URL of a *url.Error (the caller names it, redacted).
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
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
	r := probeResult{byNode: map[string][]string{}}
	if p.opts.Client == nil {
		r.err = errors.New("no Kubernetes client")
		return r
	}
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
	// Active is true while it refuses new grants (for pods and notReadyNodes: some),
	// whether for a finding or because its check has no clean answer.
	Active bool `json:"active"`
	// State is "clear", "blocking" (it found something), "cannot check: WHY" (its
	// check failed, answered partly, has not answered yet or is stale: it blocks, as
	// Active says; WHY is forbidden, unauthorized, timeout, partial data, not checked
	// yet, stale or error), or "checked per request" (notReadyNodes).
	State string `json:"state"`
	// Detail says what it found, or why it cannot check.
	Detail string `json:"detail,omitempty"`
	// LastSuccess is when its check last answered cleanly; zero if never.
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
}

// Blockers returns the configured blockers and their state. The not-Ready blocker
// is evaluated per group at each request; here it is only listed.
func (p *Policy) Blockers() []BlockerState {
	cfg := p.Config()
	now := p.opts.Now()
	var out []BlockerState
	if cfg.Blockers.Alerts != nil {
		out = append(out, blockerState(blockerAlerts, p.last(&p.alerts), p.alertsBlock(cfg, now)))
	}
	if len(cfg.Blockers.Pods) > 0 {
		pr := p.last(&p.pods)
		b := blockerState(blockerPods, pr, p.podsBlock(cfg, "", now))
		if !b.Active {
			var onNodes []string
			for node, pods := range pr.last.byNode {
				onNodes = append(onNodes, node+": "+strings.Join(pods, ", "))
			}
			sort.Strings(onNodes)
			if len(onNodes) > 0 {
				b.Active, b.State = true, "blocking"
				b.Detail = "blocking pods on nodes " + strings.Join(onNodes, "; ")
			}
		}
		out = append(out, b)
	}
	if cfg.Blockers.NotReadyNodes {
		out = append(out, BlockerState{Name: "notReadyNodes", State: "checked per request",
			Detail: "checked per group at each request"})
	}
	return out
}

// blockerState describes a blocker from its probe and its refusal, if any.
func blockerState(name string, pr probe, err error) BlockerState {
	b := BlockerState{Name: name, State: "clear", LastSuccess: pr.lastSuccess}
	if err == nil {
		return b
	}
	b.Active, b.Detail, b.State = true, err.Error(), "blocking"
	if errors.Is(err, fleetlock.ErrBlockerCheckFailing) {
		b.State = "cannot check: " + failureKind(pr)
	}
	return b
}

// failureKind is a word or two for why a check has no clean answer.
func failureKind(pr probe) string {
	err := pr.last.err
	switch {
	case pr.last.at.IsZero():
		return "not checked yet"
	case err == nil:
		return "stale"
	case apierrors.IsForbidden(err):
		return "forbidden"
	case apierrors.IsUnauthorized(err):
		return "unauthorized"
	case errors.Is(err, context.DeadlineExceeded) || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err):
		return "timeout"
	case errors.Is(err, errPartialData):
		return "partial data"
	}
	return "error"
}

// CheckBlockers runs every configured check once, now, and waits for the results:
// for a one-shot status outside the server. A check already under way is not run
// twice.
func (p *Policy) CheckBlockers(ctx context.Context) {
	cfg := p.Config()
	if a := cfg.Blockers.Alerts; a != nil {
		p.startCheck(ctx, &p.alerts, 0, a.Timeout.Duration, true, func(ctx context.Context) probeResult { return p.checkAlerts(ctx, a) })
	}
	if pods := cfg.Blockers.Pods; len(pods) > 0 {
		p.startCheck(ctx, &p.pods, 0, DefaultCheckTimeout, true, func(ctx context.Context) probeResult { return p.checkPods(ctx, pods) })
	}
}

package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

// The files whose queries name reboot-manager's metrics.
var monitoringFiles = []string{
	"../../charts/reboot-manager/dashboards/reboot-manager.json",
	"../../kubernetes/monitoring.yaml",
}

// notServedHere are metrics this test's server cannot produce, with why; they must
// still be in docs/metrics.md.
var notServedHere = map[string]string{
	"rebootmanager_replacements_total": "only with --cloud, after a replacement (replace's tests count them)",
}

var metricName = regexp.MustCompile(`\brebootmanager_[a-z0-9_]+`)

// Every metric the dashboard and the alerting rules query is one the real binary
// serves on /metrics, seen live after a pause refusal (the node then waits), a drain blocked by a
// PodDisruptionBudget, a grant, a release and an unknown node's request, and from a
// second server with --verify-source-address (access refusals) and a blocker.
func TestMonitoringQueriesServed(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	f, err := fleetsim.New(ctx, env.Client, env.Kubelet, fleetsim.Options{
		Name: "mon", Namespace: ns, Groups: []fleetsim.Group{{Name: "default", Nodes: 2, Slots: 1}},
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Delete(context.WithoutCancel(t.Context())) })
	var node string
	for _, n := range f.Nodes() {
		if webPods(t, env, ns, n) > 0 {
			node = n
			break
		}
	}
	require.NotEmpty(t, node, "the Deployment runs on some node")

	pauseNS := env.Namespace(t)
	s := startServer(t, env.Kubeconfig, "--wait=3s", "--namespace="+pauseNS)
	client := fleetlock.Client{BaseURL: s.FleetLock}
	params := fleetlock.ClientParams{ID: f.ZincatiID(node), Group: "default"}
	served := map[string]bool{}
	scrape := func(s *fleetsim.Server) {
		t.Helper()
		for _, line := range strings.Split(metrics(t, s), "\n") {
			if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
				name, kind, _ := strings.Cut(name, " ")
				served[name] = true
				if kind == "histogram" {
					served[name+"_bucket"], served[name+"_sum"], served[name+"_count"] = true, true, true
				}
			}
		}
	}
	// Called inside Eventually's goroutine: an error is a reply to ask again.
	preReboot := func() fleetlock.Kind {
		resp, err := client.PreReboot(ctx, params)
		if err != nil {
			return ""
		}
		return resp.Reply.Kind
	}

	// Paused: a refusal by the policy.
	_, err = env.Client.CoreV1().ConfigMaps(pauseNS).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-pause"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return preReboot() == fleetlock.KindPaused }, 30*time.Second, 200*time.Millisecond)
	// The refused node waits for a slot: its group's waiting gauges.
	require.Eventually(t, func() bool {
		m, err := s.Metrics()
		return err == nil && strings.Contains(m, `rebootmanager_group_waiting_since_timestamp_seconds{group="default"}`)
	}, 30*time.Second, 200*time.Millisecond, "the refused node shows as waiting")
	scrape(s)
	require.NoError(t, env.Client.CoreV1().ConfigMaps(pauseNS).Delete(ctx, "reboot-manager-pause", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		m, err := s.Metrics()
		return err == nil && strings.Contains(m, "rebootmanager_paused 0")
	}, 30*time.Second, 200*time.Millisecond)

	// A budget that allows no disruption blocks the drain.
	pdb := "mon-web-default"
	setBudget := func(maxUnavailable int) {
		t.Helper()
		_, err := env.Client.PolicyV1().PodDisruptionBudgets(ns).Patch(ctx, pdb, types.MergePatchType,
			[]byte(`{"spec":{"maxUnavailable":`+string(rune('0'+maxUnavailable))+`}}`), metav1.PatchOptions{})
		require.NoError(t, err)
	}
	setBudget(0)
	require.Eventually(t, func() bool {
		preReboot()
		m, _ := s.Metrics() // an error: empty, ask again
		// Any blocked-drain series of the node, whatever its name and other labels.
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, "rebootmanager_drain_blocked") && strings.Contains(line, `node="`+node+`"`) {
				return true
			}
		}
		return false
	}, time.Minute, 200*time.Millisecond, "the drain is reported blocked")
	scrape(s)
	setBudget(1)
	require.Eventually(t, func() bool { return preReboot() == fleetlock.KindLockGranted }, 2*time.Minute, 200*time.Millisecond)
	scrape(s)
	require.NoError(t, env.Kubelet.Reboot(ctx, node, 0)) // back: Ready, a new boot ID
	resp, err := client.SteadyState(ctx, params)
	require.NoError(t, err)
	require.Equal(t, fleetlock.KindLockReleased, resp.Reply.Kind)
	_, err = client.PreReboot(ctx, fleetlock.ClientParams{ID: "00000000000000000000000000000000", Group: "default"})
	require.NoError(t, err)
	scrape(s)

	// Access refusals are counted from the start when a check is on, and blockers are
	// reported once configured.
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: rebootmanager/v1\nblockers:\n  pods: [{selector: app=none}]\n"), 0o600))
	scrape(startServer(t, env.Kubeconfig, "--verify-source-address", "--namespace="+pauseNS, "--config="+config))

	queried := map[string][]string{}
	for _, file := range monitoringFiles {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, name := range metricName.FindAllString(string(b), -1) {
			queried[name] = append(queried[name], strings.TrimPrefix(file, "../../"))
		}
	}
	require.NotEmpty(t, queried)
	docs, err := os.ReadFile("../../docs/metrics.md")
	require.NoError(t, err)
	names := make([]string, 0, len(queried))
	for name := range queried {
		names = append(names, name)
	}
	sort.Strings(names)
	var servedNames []string
	for name := range served {
		if strings.HasPrefix(name, "rebootmanager_") {
			servedNames = append(servedNames, name)
		}
	}
	sort.Strings(servedNames)
	for _, name := range names {
		if why, ok := notServedHere[name]; ok {
			assert.Contains(t, string(docs), "`"+name+"`", "%s (queried in %s; served %s) is not in docs/metrics.md", name, queried[name], why)
			continue
		}
		assert.True(t, served[name], "%s, queried in %s, is not a metric reboot-manager serves; it serves %s",
			name, strings.Join(uniq(queried[name]), ", "), strings.Join(servedNames, ", "))
	}
}

func uniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

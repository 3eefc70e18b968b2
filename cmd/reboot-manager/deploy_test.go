package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/lock"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

var built struct {
	once sync.Once
	path string
	err  error
}

// binary builds reboot-manager once per test binary.
func binary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "reboot-manager-bin-") //nolint:usetesting // shared by every test of the binary
		if err == nil {
			built.path, err = fleetsim.BuildServer(dir)
		}
		built.err = err
	})
	require.NoError(t, built.err)
	return built.path
}

func startServer(t *testing.T, kubeconfig string, args ...string) *fleetsim.Server {
	t.Helper()
	logs := &fleetsim.LogBuffer{}
	s, err := fleetsim.StartServer(binary(t), kubeconfig, logs, append([]string{"--log-format=text", "--log-level=debug"}, args...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = s.Stop()
		if t.Failed() || os.Getenv("SHOW_LOGS") != "" {
			t.Logf("reboot-manager logs:\n%s", logs.String())
		}
	})
	return s
}

func metrics(t *testing.T, s *fleetsim.Server) string {
	t.Helper()
	m, err := s.Metrics()
	require.NoError(t, err)
	return m
}

// The manifest installs with kubectl; the binary, authenticated as the manifest's
// ServiceAccount, completes a full cycle for a node running PDB-protected pods; its
// metrics show the same holders after a restart; and the ClusterRole holds nothing
// spare: without the one verb the cycle needs to take the lock, nothing is granted.
func TestDeployedCycle(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	bin, err := controlplane.BinDir()
	require.NoError(t, err)
	kubectl := func(args ...string) {
		t.Helper()
		out, err := exec.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig=" + env.Kubeconfig}, args...)...).CombinedOutput()
		require.NoError(t, err, "kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	kubectl("apply", "-f", "../../kubernetes/deployment.yaml")
	_, kubeconfig := env.ServiceAccountClient(t, "reboot-manager", "reboot-manager")

	// Two nodes, a Deployment spread over them under a PDB that allows one disruption.
	ns := env.Namespace(t)
	f, err := fleetsim.New(ctx, env.Client, env.Kubelet, fleetsim.Options{
		Name: "deploy", Namespace: ns, Groups: []fleetsim.Group{{Name: "default", Nodes: 2, Slots: 1}},
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Delete(context.WithoutCancel(t.Context())) })
	// The spread is a preference: reboot a node the scheduler gave a web pod.
	var nodeA string
	for _, n := range f.Nodes() {
		if webPods(t, env, ns, n) > 0 {
			nodeA = n
			break
		}
	}
	require.NotEmpty(t, nodeA, "the Deployment runs on some node")

	// The policy file as the manifest mounts it.
	cm, err := env.Client.CoreV1().ConfigMaps("reboot-manager").Get(ctx, "reboot-manager-config", metav1.GetOptions{})
	require.NoError(t, err)
	configFile := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(configFile, []byte(cm.Data["config.yaml"]), 0o600))
	s := startServer(t, kubeconfig, "--wait=30s", "--config="+configFile)
	client := fleetlock.Client{BaseURL: s.FleetLock}
	a := fleetlock.ClientParams{ID: f.ZincatiID(nodeA), Group: "default"}

	resp, err := client.PreReboot(ctx, a)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "pre-reboot: %+v", resp.Reply)
	assert.Equal(t, fleetlock.KindLockGranted, resp.Reply.Kind)
	node, err := env.Client.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
	require.NoError(t, err)
	assert.True(t, node.Spec.Unschedulable, "cordoned")
	assert.Equal(t, string(lock.StateRebooting), node.Annotations[lock.AnnotationStatus])
	assert.Zero(t, webPods(t, env, ns, nodeA), "granted only once the pods are gone")

	// Restart: the metrics, computed from the cluster, show the same holder.
	require.Contains(t, metrics(t, s), `rebootmanager_lock_held_since_timestamp_seconds{group="default",node="`+nodeA+`"}`)
	require.NoError(t, s.Stop(), "clean exit on SIGTERM")
	s = startServer(t, kubeconfig, "--wait=30s", "--config="+configFile)
	client.BaseURL = s.FleetLock
	m := metrics(t, s)
	assert.Contains(t, m, `rebootmanager_lock_held_since_timestamp_seconds{group="default",node="`+nodeA+`"}`)
	assert.Contains(t, m, `rebootmanager_group_holders{group="default"} 1`)

	require.NoError(t, env.Kubelet.Reboot(ctx, nodeA, 0)) // back: Ready, a new boot ID
	resp, err = client.SteadyState(ctx, a)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "steady-state: %+v", resp.Reply)
	assert.Equal(t, fleetlock.KindLockReleased, resp.Reply.Kind)
	node, err = env.Client.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, node.Spec.Unschedulable, "uncordoned")
	// The lock metrics are read from the replica's node cache, which sees the
	// release's write a moment after steady-state answered.
	assert.Eventually(t, func() bool {
		m, err := s.Metrics()
		return err == nil && strings.Contains(m, `rebootmanager_group_holders{group="default"} 0`)
	}, 30*time.Second, 50*time.Millisecond, "the release shows in the metrics")

	// Every verb the ClusterRole grants was exercised by the cycle, and nothing else was
	// asked for: the role is what the code uses, no more.
	assertRoleMatchesUse(t, env, "system:serviceaccount:reboot-manager:reboot-manager")

	// Without "patch" on nodes the lock cannot be taken: refused, nothing changes.
	kubectl("patch", "clusterrole", "reboot-manager", "--type=json",
		`-p=[{"op":"replace","path":"/rules/0/verbs","value":["get","list","watch"]}]`)
	t.Cleanup(func() { kubectl("apply", "-f", "../../kubernetes/deployment.yaml") })
	resp, err = client.PreReboot(ctx, a)
	require.NoError(t, err)
	assert.False(t, resp.OK(), "granted without the right to patch nodes: %+v", resp.Reply)
	assert.Equal(t, fleetlock.KindAPIUnavailable, resp.Reply.Kind)
	node, err = env.Client.CoreV1().Nodes().Get(ctx, nodeA, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, node.Spec.Unschedulable)
	assert.Equal(t, string(lock.StateReady), node.Annotations[lock.AnnotationStatus], "no claim left")
}

// assertRoleMatchesUse compares the requests user made (from the API server's audit
// log) with the rules of the manifest's ClusterRole and Role.
func assertRoleMatchesUse(t *testing.T, env *controlplane.Env, user string) {
	t.Helper()
	b, err := os.ReadFile(env.AuditLog)
	require.NoError(t, err)
	used := map[string]bool{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var ev struct {
			Verb string `json:"verb"`
			User struct {
				Username string `json:"username"`
			} `json:"user"`
			ObjectRef *struct {
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
				APIGroup    string `json:"apiGroup"`
			} `json:"objectRef"`
		}
		if json.Unmarshal(line, &ev) != nil || ev.User.Username != user || ev.ObjectRef == nil {
			continue
		}
		r := ev.ObjectRef.Resource
		if ev.ObjectRef.Subresource != "" {
			r += "/" + ev.ObjectRef.Subresource
		}
		used[ev.ObjectRef.APIGroup+" "+r+" "+ev.Verb] = true
	}
	role, err := env.Client.RbacV1().ClusterRoles().Get(t.Context(), "reboot-manager", metav1.GetOptions{})
	require.NoError(t, err)
	rules := role.Rules
	nsRole, err := env.Client.RbacV1().Roles("reboot-manager").Get(t.Context(), "reboot-manager", metav1.GetOptions{})
	require.NoError(t, err)
	rules = append(rules, nsRole.Rules...)
	granted := map[string]bool{}
	for _, rule := range rules {
		for _, g := range rule.APIGroups {
			for _, r := range rule.Resources {
				for _, v := range rule.Verbs {
					granted[g+" "+r+" "+v] = true
				}
			}
		}
	}
	// Granted for paths a healthy cycle does not take: the events library patches an
	// Event only to count a repeat within minutes (a series); the drain lists budgets
	// only for a pod that several select, and informers list only when they cannot stream
	// their initial state through the watch.
	notExercised := map[string]bool{
		"events.k8s.io events patch":       true,
		"policy poddisruptionbudgets list": true,
		" configmaps list":                 true,
	}
	for k := range granted {
		if !notExercised[k] {
			assert.True(t, used[k], "the roles grant %q, which the cycle never used", k)
		}
	}
	for k := range used {
		assert.True(t, granted[k], "the cycle used %q, which the roles do not grant", k)
	}
}

// webPods counts the pods of the fleet's Deployment on node.
func webPods(t *testing.T, env *controlplane.Env, ns, node string) int {
	t.Helper()
	pods, err := env.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + node, LabelSelector: "app=web-default",
	})
	require.NoError(t, err)
	return len(pods.Items)
}

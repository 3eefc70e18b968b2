package fleetsim_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/fleetsim"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// rollout rolls a fleet behind replicas reboot-manager processes built with tags.
func rollout(t *testing.T, name string, groups []fleetsim.Group, replicas int, tags ...string) *fleetsim.Report {
	t.Helper()
	env := controlplane.Shared(t)
	ns := env.Namespace(t)
	bin, err := fleetsim.BuildServer(t.TempDir(), tags...)
	require.NoError(t, err)
	args := []string{"--wait=20s", "--log-format=text", "--log-level=debug"}
	for _, g := range groups {
		args = append(args, "--group-slots="+g.Name+"="+itoa(g.Slots))
	}
	var endpoints []string
	var logs []*fleetsim.LogBuffer
	for range replicas {
		l := &fleetsim.LogBuffer{}
		s, err := fleetsim.StartServer(bin, env.Kubeconfig, l, args...)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, s.Stop(), "clean exit on SIGTERM") })
		endpoints = append(endpoints, s.FleetLock)
		logs = append(logs, l)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("reboot-manager %d:\n%s", i, l.String())
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := fleetsim.New(ctx, env.Client, env.Kubelet, fleetsim.Options{
		Name: name, Namespace: ns, Groups: groups, Poll: time.Second, Downtime: 500 * time.Millisecond,
		Endpoints: endpoints, PreCordoned: 1, Log: t.Logf,
	})
	require.NoError(t, err)
	t.Cleanup(func() { f.Delete(context.Background()) })
	rep, err := f.Roll(ctx)
	require.NoError(t, err)
	t.Logf("\n%s", rep.Summary())
	return rep
}

// Two groups (1 and 2 slots), two replicas behind the simulated Zincatis, a pre-cordoned
// node per group: every invariant holds and every node rebooted once.
func TestRollout(t *testing.T) {
	groups := []fleetsim.Group{{Name: "a", Nodes: 4, Slots: 1}, {Name: "b", Nodes: 4, Slots: 2}}
	rep := rollout(t, "e2e", groups, 2)
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, rep.MostHeld["a"])
	assert.LessOrEqual(t, rep.MostHeld["b"], 2)
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
		assert.False(t, n.Locked.After(n.Allowed), "%s: allowed before it held a slot", n.Name)
	}
}

// A server that tells nodes to reboot before their pods are gone (a test-only build)
// is caught: the checks can fail.
func TestRolloutCatchesGrantBeforeDrain(t *testing.T) {
	groups := []fleetsim.Group{{Name: "u", Nodes: 3, Slots: 1}}
	rep := rollout(t, "unsafe", groups, 1, "rebootmanager_unsafe_grant")
	var caught bool
	for _, v := range rep.Violations {
		caught = caught || strings.Contains(v.What, "pods left to evict")
	}
	assert.True(t, caught, "violations: %v", rep.Violations)
}

func itoa(i int) string { return strconv.Itoa(i) }

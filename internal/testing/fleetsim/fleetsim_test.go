package fleetsim_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fakeasg"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func TestMain(m *testing.M) {
	code := controlplane.RunTests(m)
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// builds are the reboot-manager binaries built for this test binary, by build tags:
// each is built once, before any test's clock starts (a cold build takes minutes).
var builds struct {
	sync.Mutex
	dir  string
	bins map[string]string
}

// serverBinary returns the reboot-manager binary built with tags, building it once.
func serverBinary(t *testing.T, tags []string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	key := strings.Join(tags, ",")
	if bin, ok := builds.bins[key]; ok {
		return bin
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "reboot-manager-fleetsim-") //nolint:usetesting // shared by every test of the binary
		require.NoError(t, err)
		builds.dir, builds.bins = dir, map[string]string{}
	}
	bin, err := fleetsim.BuildServer(builds.dir, tags...)
	require.NoError(t, err)
	builds.bins[key] = bin
	return bin
}

// harness is a namespace, reboot-manager replicas built from the tree, and a fleet.
type harness struct {
	env     *controlplane.Env
	ns      string
	bin     string
	args    []string
	servers []*fleetsim.Server
	logs    []*fleetsim.LogBuffer
}

// newHarness starts replicas of reboot-manager, built with tags, configured for groups.
func newHarness(t *testing.T, groups []fleetsim.Group, replicas int, tags []string, args ...string) *harness {
	t.Helper()
	env := controlplane.Shared(t)
	h := &harness{env: env, ns: env.Namespace(t)}
	h.bin = serverBinary(t, tags)
	h.args = append([]string{"--wait=20s", "--log-format=text", "--log-level=debug", "--namespace=" + h.ns}, args...)
	for _, g := range groups {
		if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--config=") }) {
			h.args = append(h.args, fmt.Sprintf("--group-slots=%s=%d", g.Name, g.Slots))
		}
	}
	for range replicas {
		h.start(t)
	}
	t.Cleanup(func() {
		for _, s := range h.servers {
			_ = s.Stop()
		}
		if t.Failed() {
			for i, l := range h.logs {
				t.Logf("reboot-manager %d:\n%s", i, l.String())
			}
		}
	})
	return h
}

// start starts one more replica.
func (h *harness) start(t *testing.T) *fleetsim.Server {
	t.Helper()
	l := &fleetsim.LogBuffer{}
	s, err := fleetsim.StartServer(h.bin, h.env.Kubeconfig, l, h.args...)
	require.NoError(t, err)
	h.servers = append(h.servers, s)
	h.logs = append(h.logs, l)
	return s
}

func (h *harness) endpoints() []string {
	var e []string
	for _, s := range h.servers {
		e = append(e, s.FleetLock)
	}
	return e
}

// fleet creates a fleet served by the harness's replicas.
func (h *harness) fleet(t *testing.T, ctx context.Context, opts fleetsim.Options) *fleetsim.Fleet {
	t.Helper()
	opts.Namespace = h.ns
	if opts.Endpoints == nil {
		opts.Endpoints = h.endpoints()
	}
	if opts.Poll == 0 {
		opts.Poll = time.Second
	}
	if opts.Downtime == 0 {
		opts.Downtime = 500 * time.Millisecond
	}
	opts.Log = t.Logf
	f, err := fleetsim.New(ctx, h.env.Client, h.env.Kubelet, opts)
	require.NoError(t, err)
	t.Cleanup(func() { f.Delete(context.WithoutCancel(t.Context())) })
	return f
}

func roll(t *testing.T, ctx context.Context, f *fleetsim.Fleet) *fleetsim.Report {
	t.Helper()
	rep, err := f.Roll(ctx)
	require.NoError(t, err)
	t.Logf("\n%s", rep.Summary())
	return rep
}

// Two groups (1 and 2 slots), two replicas behind the simulated Zincatis, a pre-cordoned
// node per group: every invariant holds and every node rebooted once.
func TestRollout(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "a", Nodes: 4, Slots: 1}, {Name: "b", Nodes: 4, Slots: 2}}
	h := newHarness(t, groups, 2, nil)
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "e2e", Groups: groups, PreCordoned: 1}))
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, rep.MostHeld["a"])
	assert.LessOrEqual(t, rep.MostHeld["b"], 2)
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
		assert.False(t, n.Locked.After(n.Allowed), "%s: allowed before it held a slot", n.Name)
	}
}

// A rollout through a fleet as unkind as a cluster (issue 14): reboots never marked
// NotReady, kubelets that post seconds after Zincati's steady-state, kubelet clocks
// 90s behind in whole seconds, a Node deleted and created again under its name while
// it drains, a machine that comes back under a new Node name, pods that tolerate the
// cordon bound to every draining node, and pods whose finalizer keeps them
// Terminating. At every 2xx, from a fresh read: this grant, cordoned, no pod that must
// leave; no release before a new boot ID; every node rebooted once.
func TestRolloutUnkind(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "a", Nodes: 4, Slots: 1}, {Name: "b", Nodes: 4, Slots: 2}}
	h := newHarness(t, groups, 2, nil)
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "unkind", Groups: groups, PreCordoned: 1,
		Unkind: fleetsim.Unkind{
			QuietReboots:  true,
			LateKubelet:   3 * time.Second,
			ClockSkew:     -90 * time.Second,
			Recreate:      func(node string) bool { return node == "unkind-a-01" },
			ReRegister:    func(node string) bool { return node == "unkind-b-02" },
			TolerantPods:  true,
			PodFinalizers: 500 * time.Millisecond,
		}}))
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, rep.MostHeld["a"])
	assert.LessOrEqual(t, rep.MostHeld["b"], 2)
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
	}
}

// A server that tells nodes to reboot before their pods are gone (a test-only build)
// is caught: the checks can fail.
func TestRolloutCatchesGrantBeforeDrain(t *testing.T) {
	serverBinary(t, []string{"rebootmanager_unsafe_grant"}) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "u", Nodes: 3, Slots: 1}}
	h := newHarness(t, groups, 1, []string{"rebootmanager_unsafe_grant"})
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "unsafe", Groups: groups, PreCordoned: 1}))
	var caught bool
	for _, v := range rep.Violations {
		caught = caught || strings.Contains(v.What, "pods left to evict")
	}
	assert.True(t, caught, "violations: %v", rep.Violations)
}

// A rollout staged while its group's reboot window is closed grants nothing until the
// window opens (at the next minute, in a time zone half an hour off UTC), then
// completes inside it.
func TestRolloutWaitsForWindow(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	require.NoError(t, err)
	now := time.Now().In(kolkata)
	opens := now.Truncate(time.Minute).Add(time.Minute)
	if opens.Sub(now) < 10*time.Second {
		opens = opens.Add(time.Minute) // long enough closed to be refused
	}
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `
apiVersion: rebootmanager/v1
groups:
  w:
    slots: 1
    windows: [{start: %q, end: %q, timeZone: Asia/Kolkata}]
`, opens.Format("15:04"), opens.Add(15*time.Minute).Format("15:04")), 0o600))
	groups := []fleetsim.Group{{Name: "w", Nodes: 3, Slots: 1}}
	h := newHarness(t, groups, 1, nil, "--config="+config)
	t.Logf("window opens at %s (in %s)", opens.Format("15:04 MST"), time.Until(opens).Round(time.Second))
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "window", Groups: groups}))
	assert.Empty(t, rep.Violations)
	for _, n := range rep.Nodes {
		assert.False(t, n.Locked.Before(opens), "%s took a slot at %s, before the window opened", n.Name, n.Locked.Format(time.TimeOnly))
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
	}
	m, err := h.servers[0].Metrics()
	require.NoError(t, err)
	assert.Regexp(t, `rebootmanager_refusals_total\{group="[^"]+",reason="RebootWindowClosed"\} [1-9]`, m, "refused while closed")
}

// A node that never comes back from its reboot is replaced through its (fake) Auto
// Scaling group: the group launches a new instance, whose node joins; the old Node is
// deleted, its slot frees, and the rollout of the other nodes completes behind it.
// Two replicas serve and replace (the shipped manifest runs two): one termination.
func TestRolloutReplacesNodeThatNeverReturns(t *testing.T) {
	// replaceAfter 3s is under policy.MinReplaceAfter: a test build accepts it.
	unsafeReplace := []string{"rebootmanager_unsafe_replace"}
	serverBinary(t, unsafeReplace) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env := controlplane.Shared(t)
	fake := fakeasg.New()
	t.Cleanup(fake.Close)
	fake.AddGroup(&fakeasg.Group{Name: "asg-w", Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: 4})
	instances := map[string]string{}
	providerID := func(node string) string {
		id := fmt.Sprintf("i-%017x", len(instances)+1)
		instances[node] = id
		fake.AddInstance("asg-w", id, "eu-west-1a")
		return "aws:///eu-west-1a/" + id
	}
	var launched []string
	fake.OnTerminate = func(group, _ string) {
		name := fmt.Sprintf("replaced-%d", len(launched))
		id := fmt.Sprintf("i-%017x", 100+len(launched))
		fake.AddInstance(group, id, "eu-west-1a")
		_, err := env.Kubelet.AddNode(t.Context(), name, simkubelet.NodeOptions{ProviderID: "aws:///eu-west-1a/" + id})
		assert.NoError(t, err)
		launched = append(launched, name)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
	}
	// The binary's SDK reaches the fake through its endpoint variable, with static
	// credentials and no instance metadata.
	t.Setenv("AWS_ENDPOINT_URL_AUTO_SCALING", fake.URL())
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(`
apiVersion: rebootmanager/v1
groups:
  w: {slots: 1, replaceAfter: 3s}
replacement: {interval: 1s, timeout: 1m}
`), 0o600))
	groups := []fleetsim.Group{{Name: "w", Nodes: 4, Slots: 1}}
	h := newHarness(t, groups, 2, unsafeReplace, "--config="+config, "--cloud=aws")
	dead := "lost-w-01"
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "lost", Groups: groups,
		ProviderID: providerID, NeverReturns: func(node string) bool { return node == dead }}))
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, fake.Count("TerminateInstanceInAutoScalingGroup"))
	assert.Equal(t, "Terminating", fake.InstanceState(instances[dead]))
	require.Len(t, launched, 1)
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
	}
	// Two replicas: one may start the replacement and the other see it through.
	started, replaced := 0, 0
	for _, srv := range h.servers {
		m, err := srv.Metrics()
		require.NoError(t, err)
		assert.NotRegexp(t, `rebootmanager_replacements_total\{result="(started|replaced)"\} [^01]`, m)
		if strings.Contains(m, `rebootmanager_replacements_total{result="started"} 1`+"\n") {
			started++
		}
		if strings.Contains(m, `rebootmanager_replacements_total{result="replaced"} 1`+"\n") {
			replaced++
		}
	}
	assert.Equal(t, 1, started, "replacements started, both replicas together")
	assert.Equal(t, 1, replaced, "replacements seen through, both replicas together")
}

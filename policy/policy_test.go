package policy_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
	"github.com/reboot-manager/reboot-manager/policy"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// rig is a lock with a policy on the shared control plane, and a few nodes.
type rig struct {
	t      *testing.T
	env    *controlplane.Env
	ns     string
	lock   *lock.Lock
	policy *policy.Policy
	nodes  []string
	ids    map[string]string
	config atomic.Pointer[policy.Config]
}

type rigOptions struct {
	config string
	nodes  int
	now    func() time.Time
	wait   time.Duration
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	env := controlplane.Shared(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	r := &rig{t: t, env: env, ns: env.Namespace(t), ids: map[string]string{}}
	r.setConfig(o.config)
	prefix := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	for i := range max(o.nodes, 1) {
		name := fmt.Sprintf("%s-%d", prefix, i)
		mid := simkubelet.RandomID()
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: mid})
		require.NoError(t, err)
		id, err := fleetlock.ZincatiID(mid)
		require.NoError(t, err)
		r.nodes = append(r.nodes, name)
		r.ids[name] = id
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
	}
	r.policy = policy.New(policy.Options{Config: r.config.Load, Client: env.Client, Namespace: r.ns, Now: o.now})
	require.NoError(t, r.policy.Start(ctx))
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: env.Client.EventsV1()})
	require.NoError(t, broadcaster.StartRecordingToSinkWithContext(ctx))
	t.Cleanup(broadcaster.Shutdown)
	var err error
	r.lock, err = lock.New(env.Client, &locktest.Drained{}, lock.Options{
		Policy: r.policy, Wait: max(o.wait, time.Second),
		Recorder: broadcaster.NewRecorder(scheme.Scheme, "reboot-manager"),
	})
	require.NoError(t, err)
	require.NoError(t, r.lock.Start(ctx))
	require.Eventually(t, func() bool {
		for _, n := range r.nodes {
			if _, err := r.lock.Resolve(r.ids[n]); err != nil {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)
	return r
}

func (r *rig) setConfig(yaml string) {
	r.t.Helper()
	c, err := policy.Parse([]byte(yaml))
	require.NoError(r.t, err)
	r.config.Store(c)
}

func (r *rig) params(node, group string) fleetlock.ClientParams {
	return fleetlock.ClientParams{ID: r.ids[node], Group: group}
}

func (r *rig) preReboot(node string) error {
	return r.lock.PreReboot(context.Background(), r.params(node, "default"))
}

// steadyState reboots node (the lock releases only a node back from its reboot), then
// sends its steady-state.
func (r *rig) steadyState(node string) (bool, error) {
	if err := r.env.Kubelet.Reboot(context.Background(), node, 0); err != nil {
		return false, err
	}
	return r.lock.SteadyState(context.Background(), r.params(node, "default"))
}

// status returns the node's lock state from the API server.
func (r *rig) status(node string) string {
	r.t.Helper()
	n, err := r.env.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	require.NoError(r.t, err)
	return n.Annotations[lock.AnnotationStatus]
}

func (r *rig) annotate(node, key string, value *string) {
	r.t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	_, err := r.env.Client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType,
		fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%s}}}`, key, v), metav1.PatchOptions{})
	require.NoError(r.t, err)
}

// assertRefusals compares the refusal counters with want, a map of reason to count.
func (r *rig) assertRefusals(want map[string]int) {
	r.t.Helper()
	var b strings.Builder
	b.WriteString("# HELP rebootmanager_refusals_total Pre-reboot requests refused by the operator's policy (window, pause, hold, gap, blockers) or for an uncordoned holder, by group and reason.\n# TYPE rebootmanager_refusals_total counter\n")
	for reason, n := range want {
		fmt.Fprintf(&b, "rebootmanager_refusals_total{group=\"default\",reason=%q} %d\n", reason, n)
	}
	assert.NoError(r.t, testutil.CollectAndCompare(r.lock, strings.NewReader(b.String()), "rebootmanager_refusals_total"))
}

// Pausing everything refuses new grants with "paused" while the ConfigMap exists, lets
// steady-state release, and lifts when the ConfigMap goes. A node hold refuses that
// node alone. Each refusal reason posts one Event and counts in the metric.
func TestPauseAndNodeHold(t *testing.T) {
	r := newRig(t, rigOptions{nodes: 3})
	ctx := t.Context()
	a, b, c := r.nodes[0], r.nodes[1], r.nodes[2]
	require.NoError(t, r.preReboot(a), "granted before the pause")

	cms := r.env.Client.CoreV1().ConfigMaps(r.ns)
	_, err := cms.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: policy.DefaultPauseConfigMap},
		Data:       map[string]string{"reason": "incident 42"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, p := r.policy.Paused(); return p }, 10*time.Second, 20*time.Millisecond)

	err = r.preReboot(b)
	require.ErrorIs(t, err, fleetlock.ErrPaused)
	assert.Contains(t, err.Error(), "incident 42")
	assert.Equal(t, "", r.status(b), "a refusal writes nothing")
	require.NoError(t, r.preReboot(a), "a holder keeps its slot while paused")
	released, err := r.steadyState(a)
	require.NoError(t, err)
	assert.True(t, released, "steady-state works while paused")
	assert.ErrorIs(t, r.preReboot(b), fleetlock.ErrPaused)
	r.env.AwaitNodeEvent(t, b, "RebootPaused", "incident 42")

	require.NoError(t, cms.Delete(ctx, policy.DefaultPauseConfigMap, metav1.DeleteOptions{}))
	require.Eventually(t, func() bool { _, p := r.policy.Paused(); return !p }, 10*time.Second, 20*time.Millisecond)

	reason := "disk replacement"
	r.annotate(c, lock.AnnotationHold, &reason)
	require.Eventually(t, func() bool { return errors.Is(r.preReboot(c), fleetlock.ErrNodeHeld) }, 10*time.Second, 50*time.Millisecond)
	r.env.AwaitNodeEvent(t, c, "RebootHeld", "disk replacement")
	require.NoError(t, r.preReboot(b), "the hold is c's alone")
	_, err = r.steadyState(b)
	require.NoError(t, err)
	r.annotate(c, lock.AnnotationHold, nil)
	require.Eventually(t, func() bool {
		n, err := r.lock.Resolve(r.ids[c])
		return err == nil && n.Annotations[lock.AnnotationHold] == ""
	}, 10*time.Second, 20*time.Millisecond, "the cache sees the hold lifted")
	require.NoError(t, r.preReboot(c))
	r.assertRefusals(map[string]int{"RebootPaused": 2, "RebootHeld": 1})
}

// A window crossing midnight in a time zone other than the clock's: closed, nothing
// is granted (and nothing written); open, granted.
func TestWindowAcrossMidnight(t *testing.T) {
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	require.NoError(t, err)
	clk := &clock{}
	// Saturday 2026-11-21 21:30 in Tokyo: before the 23:00-02:00 window of Saturdays.
	clk.Set(time.Date(2026, 11, 21, 21, 30, 0, 0, tokyo).UTC())
	r := newRig(t, rigOptions{nodes: 1, now: clk.Now, config: `
defaults:
  windows:
    - {days: [Sat], start: "23:00", end: "02:00", timeZone: Asia/Tokyo}
`})
	n := r.nodes[0]
	err = r.preReboot(n)
	require.ErrorIs(t, err, fleetlock.ErrWindowClosed)
	assert.Contains(t, err.Error(), "Sat 23:00-02:00 Asia/Tokyo")
	assert.Equal(t, "", r.status(n))

	clk.Set(time.Date(2026, 11, 22, 1, 30, 0, 0, tokyo).UTC()) // Sunday 01:30: Saturday's window
	require.NoError(t, r.preReboot(n))
	assert.Equal(t, string(lock.StateRebooting), r.status(n))
	_, err = r.steadyState(n)
	require.NoError(t, err)

	clk.Set(time.Date(2026, 11, 22, 2, 0, 0, 0, tokyo).UTC()) // closed again
	assert.ErrorIs(t, r.preReboot(n), fleetlock.ErrWindowClosed)
}

// The minimum gap counts from the group's last release, as recorded on the nodes.
func TestMinimumGap(t *testing.T) {
	clk := &clock{}
	clk.Set(time.Now())
	r := newRig(t, rigOptions{nodes: 2, now: clk.Now, config: "defaults: {minGap: 10m}"})
	a, b := r.nodes[0], r.nodes[1]
	require.NoError(t, r.preReboot(a), "no release known yet: no gap")
	released, err := r.steadyState(a)
	require.NoError(t, err)
	require.True(t, released)
	require.Eventually(t, func() bool { return errors.Is(r.preReboot(b), fleetlock.ErrRebootGap) }, 10*time.Second, 50*time.Millisecond)
	clk.Set(clk.Now().Add(9 * time.Minute))
	assert.ErrorIs(t, r.preReboot(b), fleetlock.ErrRebootGap)
	clk.Set(clk.Now().Add(2 * time.Minute))
	require.NoError(t, r.preReboot(b))
}

// alertsServer speaks Prometheus' GET /api/v1/alerts; status 0 answers alerts.
type alertsServer struct {
	mu     sync.Mutex
	status int
	alerts string // the JSON array of alerts
	asked  atomic.Int32
}

func (s *alertsServer) set(status int, alerts string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.alerts = status, alerts
}

func (s *alertsServer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	s.asked.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.URL.Path != "/api/v1/alerts" || req.Method != http.MethodGet {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if s.status != 0 {
		w.WriteHeader(s.status)
		fmt.Fprint(w, `{"status":"error","errorType":"internal","error":"query failed"}`)
		return
	}
	fmt.Fprintf(w, `{"status":"success","data":{"alerts":%s}}`, s.alerts)
}

// A matching firing alert blocks new grants; a pending one, or one that does not
// match, does not; a failed query blocks (failing open would reboot in an incident),
// and so does an unreachable Prometheus.
func TestAlertsBlocker(t *testing.T) {
	srv := &alertsServer{alerts: "[]"}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	r := newRig(t, rigOptions{nodes: 1, config: fmt.Sprintf(`
blockers:
  alerts: {url: %q, interval: 1s, match: {severity: "critical|page"}}
`, hs.URL)})
	n := r.nodes[0]
	grantAndRelease := func(why string) {
		t.Helper()
		require.Eventually(t, func() bool { return r.preReboot(n) == nil }, 10*time.Second, 100*time.Millisecond, why)
		_, err := r.steadyState(n)
		require.NoError(t, err)
	}
	blocked := func(kind error, want string) {
		t.Helper()
		var err error
		require.Eventually(t, func() bool {
			if err = r.preReboot(n); err == nil {
				_, _ = r.steadyState(n) // granted before the blocker saw the change
			}
			return errors.Is(err, kind)
		}, 10*time.Second, 100*time.Millisecond, "blocked: %s", want)
		assert.Contains(t, err.Error(), want)
		assert.Equal(t, string(lock.StateReady), r.status(n), "a refusal writes nothing")
	}
	grantAndRelease("no alerts")

	srv.set(0, `[
	  {"labels":{"alertname":"NodeDown","severity":"critical"},"state":"firing"},
	  {"labels":{"alertname":"DiskSlow","severity":"warning"},"state":"firing"},
	  {"labels":{"alertname":"Pending","severity":"page"},"state":"pending"}]`)
	blocked(fleetlock.ErrAlertFiring, "alerts firing: NodeDown")

	srv.set(0, `[{"labels":{"alertname":"DiskSlow","severity":"warning"},"state":"firing"},
	  {"labels":{"alertname":"NoSeverity"},"state":"firing"}]`)
	grantAndRelease("only alerts that do not match")

	srv.set(http.StatusInternalServerError, "")
	blocked(fleetlock.ErrBlockerCheckFailing, "alerts check failing: GET "+hs.URL+"/api/v1/alerts: 500 Internal Server Error: query failed")
	r.env.AwaitNodeEvent(t, n, "RebootAlertsCheckFailing", "alerts check failing")

	srv.set(0, "[]")
	grantAndRelease("Prometheus answers again")
	hs.Close()
	blocked(fleetlock.ErrBlockerCheckFailing, "alerts check failing: GET "+hs.URL+"/api/v1/alerts: ")
	assert.Greater(t, srv.asked.Load(), int32(3))
}

// Pods matching a blocker block every grant (cluster scope) or their node's (node
// scope); finished pods do not.
func TestPodsBlocker(t *testing.T) {
	r := newRig(t, rigOptions{nodes: 2, config: `
blockers:
  podsInterval: 1s
  pods:
    - {selector: "app=backup"}
    - {selector: "app=fsck", scope: node}
`})
	ctx := t.Context()
	a, b := r.nodes[0], r.nodes[1]
	pods := r.env.Client.CoreV1().Pods(r.ns)
	pod := func(name, app, node string) {
		_, err := pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{NodeName: node, NodeSelector: map[string]string{"nowhere": "true"},
				Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/x"}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	awaitErr := func(node string, want error) error {
		t.Helper()
		var err error
		require.Eventually(t, func() bool {
			err = r.preReboot(node)
			if err == nil && want != nil {
				_, _ = r.steadyState(node) // granted before the blocker saw the change
			}
			return errors.Is(err, want) || want == nil && err == nil
		}, 40*time.Second, 200*time.Millisecond, "%s: want %v, last %v", node, want, err)
		return err
	}
	_ = awaitErr(a, nil)
	_, err := r.steadyState(a)
	require.NoError(t, err)

	pod("fsck", "fsck", b)
	err = awaitErr(b, fleetlock.ErrPodsBlocking)
	assert.Contains(t, err.Error(), r.ns+"/fsck")
	_ = awaitErr(a, nil) // a node-scoped blocker blocks its node only
	_, err = r.steadyState(a)
	require.NoError(t, err)

	pod("backup", "backup", "")
	err = awaitErr(a, fleetlock.ErrPodsBlocking)
	assert.Contains(t, err.Error(), r.ns+"/backup")

	// The simulated kubelet writes the pod's status too: retry on its conflicts.
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := pods.Get(ctx, "backup", metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Status.Phase = corev1.PodSucceeded
		_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	}))
	_ = awaitErr(a, nil)
}

// With notReadyNodes, a group with a member down (not a holder) gets no new grant.
func TestGroupNotReadyBlocker(t *testing.T) {
	r := newRig(t, rigOptions{nodes: 2, config: "blockers: {notReadyNodes: true}"})
	ctx := t.Context()
	a, b := r.nodes[0], r.nodes[1]
	// a becomes a member of the group with a first reboot, then goes down unexpectedly.
	require.NoError(t, r.preReboot(a))
	_, err := r.steadyState(a)
	require.NoError(t, err)
	down := make(chan error, 1)
	go func() { down <- r.env.Kubelet.Reboot(ctx, a, 4*time.Second) }()
	var refusal error
	require.Eventually(t, func() bool {
		if refusal = r.preReboot(b); refusal == nil {
			_, _ = r.steadyState(b) // granted before a went down
		}
		return errors.Is(refusal, fleetlock.ErrGroupNotReady)
	}, 10*time.Second, 50*time.Millisecond)
	assert.Contains(t, refusal.Error(), a)
	require.NoError(t, <-down)
	require.Eventually(t, func() bool { return r.preReboot(b) == nil }, 10*time.Second, 50*time.Millisecond)
}

// A slot count lowered while nodes hold slots counts them at once: no new node gets in
// until the holders are within the new count.
func TestLoweredSlotsApplyToHolders(t *testing.T) {
	r := newRig(t, rigOptions{nodes: 3, config: "defaults: {slots: 2}"})
	a, b, c := r.nodes[0], r.nodes[1], r.nodes[2]
	require.NoError(t, r.preReboot(a))
	require.NoError(t, r.preReboot(b))
	r.setConfig("defaults: {slots: 1}")
	var held *lock.HeldError
	require.ErrorAs(t, r.preReboot(c), &held)
	assert.Equal(t, 1, held.Slots)
	assert.Equal(t, []string{a, b}, held.Holders)
	_, err := r.steadyState(a)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n, err := r.lock.Resolve(r.ids[a])
		return err == nil && n.Annotations[lock.AnnotationStatus] == string(lock.StateReady)
	}, 10*time.Second, 20*time.Millisecond)
	assert.ErrorIs(t, r.preReboot(c), fleetlock.ErrLockHeld, "one holder fills the one slot")
	_, err = r.steadyState(b)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return r.preReboot(c) == nil }, 10*time.Second, 50*time.Millisecond)
}

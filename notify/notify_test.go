package notify_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/notify"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// receiver is a local webhook: it records the bodies it is sent, and can be made to
// hang until released.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
	hold   chan struct{}
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, string(b))
		hold := r.hold
		r.mu.Unlock()
		if hold != nil {
			<-hold
		}
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

// url is the receiver as a shoutrrr generic webhook URL.
func (r *receiver) url() string { return "generic+" + r.URL + "/hook" }

// post posts an Event about node as reboot-manager's recorder would.
func post(t *testing.T, env *controlplane.Env, instance, node, reason, note string) {
	t.Helper()
	_, err := env.Client.EventsV1().Events(metav1.NamespaceDefault).Create(t.Context(), &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: node + "-"},
		EventTime:  metav1.NowMicro(), Type: corev1.EventTypeNormal, Reason: reason, Note: note, Action: "Drain",
		ReportingController: notify.Controller, ReportingInstance: instance,
		Regarding: *evict.NodeRef(node),
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

func start(t *testing.T, o notify.Options) *notify.Notifier {
	t.Helper()
	n, err := notify.New(o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- n.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return n
}

// The Events this replica posts reach the webhook as messages: a drain started, a
// drain still blocked after DrainBlockedAfter (and not one that was unblocked in
// time), a replacement; another replica's Events and other reasons do not; Events
// from before the start are not told again; and the grant hooks tell "told to reboot"
// and "back".
func TestEventsNotified(t *testing.T) {
	env := controlplane.Shared(t)
	r := newReceiver(t)
	const me = "reboot-manager-a"
	post(t, env, me, "old-node", evict.ReasonDrainStarted, "before the start")
	n := start(t, notify.Options{
		URL: r.url(), Client: env.Client, Instance: me, DrainBlockedAfter: 2 * time.Second, Interval: time.Millisecond,
	})
	time.Sleep(time.Second) // the informer's initial list holds the old Event

	post(t, env, me, "node-a", evict.ReasonDrainStarted, "evicting 3 pods")
	post(t, env, "reboot-manager-b", "node-b", evict.ReasonDrainStarted, "another replica's drain")
	post(t, env, me, "node-a", "RebootWindowClosed", "not told")
	post(t, env, me, "node-a", evict.ReasonDrainBlocked, "PodDisruptionBudget shop/web allows no disruption")
	post(t, env, me, "node-c", evict.ReasonDrainBlocked, "PodDisruptionBudget shop/db allows no disruption")
	post(t, env, me, "node-c", evict.ReasonDrainSucceeded, "drained")
	post(t, env, me, "node-d", "ReplacementFailed", "TerminateInstanceInAutoScalingGroup: AccessDenied")
	hooks := n.Hooks(nil)
	g := lock.Grant{Node: "node-a", Group: "workers", Promoted: time.Now()}
	require.NoError(t, hooks.ToldToReboot(t.Context(), &corev1.Node{}, g, time.Now()))
	hooks.Released(t.Context(), g)

	want := []string{
		"Draining node node-a for its reboot: evicting 3 pods",
		"Replacing node node-d failed: TerminateInstanceInAutoScalingGroup: AccessDenied",
		"Node node-a (group workers) is drained and told to reboot.",
		"Node node-a (group workers) released its reboot slot after",
	}
	require.Eventually(t, func() bool { return len(r.received()) >= len(want) }, 30*time.Second, 50*time.Millisecond)
	got := strings.Join(r.received(), "\n")
	for _, w := range want {
		assert.Contains(t, got, w)
	}
	// node-a's drain was released (Released) before DrainBlockedAfter; node-c's
	// succeeded. A drain blocked past it is told:
	post(t, env, me, "node-e", evict.ReasonDrainBlocked, "PodDisruptionBudget shop/queue allows no disruption")
	require.Eventually(t, func() bool {
		return strings.Contains(strings.Join(r.received(), "\n"), "The drain of node node-e has been blocked for 2s: PodDisruptionBudget shop/queue")
	}, 30*time.Second, 50*time.Millisecond)
	time.Sleep(3 * time.Second) // past node-c's and node-a's DrainBlockedAfter
	got = strings.Join(r.received(), "\n")
	for _, not := range []string{"old-node", "node-b", "not told", "node-c", "node node-a has been blocked"} {
		assert.NotContains(t, got, not)
	}
	assert.Equal(t, 5.0, count(t, n, "sent"))
}

// A receiver that hangs blocks nobody: Notify returns at once, messages beyond the
// queue are dropped and counted, and the Notifier stops when told.
func TestNotifyNeverBlocks(t *testing.T) {
	env := controlplane.Shared(t)
	r := newReceiver(t)
	r.hold = make(chan struct{})
	defer close(r.hold)
	n := start(t, notify.Options{URL: r.url(), Client: env.Client, Queue: 2, Interval: time.Millisecond})
	begin := time.Now()
	sent := 0
	for range 10 {
		if n.Notify("hello") {
			sent++
		}
	}
	assert.Less(t, time.Since(begin), 5*time.Second, "Notify waited for the receiver")
	require.Eventually(t, func() bool { return len(r.received()) == 1 }, 30*time.Second, 50*time.Millisecond, "the first message is being sent")
	// One is in flight, two queued: the rest of the ten were dropped.
	assert.LessOrEqual(t, sent, 3+1)
	assert.Equal(t, float64(10-sent), count(t, n, "dropped"))
}

// A URL no service understands is refused at the start, without echoing it (it may
// hold a token).
func TestBadURL(t *testing.T) {
	_, err := notify.New(notify.Options{URL: "nosuch://secret-token@example.com", Client: controlplane.Shared(t).Client})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "secret-token")
}

// count returns the notifications counter of result.
func count(t *testing.T, n *notify.Notifier, result string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(n))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no rebootmanager_notifications_total{result=%q}", result)
	return 0
}

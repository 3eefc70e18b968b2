package lock

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// orderPolicy is testPolicy with a group order.
type orderPolicy struct {
	testPolicy
	after map[string][]string
}

func (p orderPolicy) After(group string) []string { return p.after[group] }

// Issue 17 item 4: the nodes that hold a group back are those of the groups it goes
// after that hold, claim (a live claim) or wait (Queue: not stale).
func TestOrderBlockers(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	state := func(name, group string, s State, since time.Time) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
			AnnotationGroup: group, AnnotationStatus: string(s), AnnotationSince: since.Format(time.RFC3339Nano)}}}
	}
	nodes := []*corev1.Node{
		state("cp-hold", "cp", StateRebooting, now.Add(-time.Hour)),
		state("cp-claim", "cp", StateClaiming, now.Add(-10*time.Second)),
		state("cp-stale-claim", "cp", StateClaiming, now.Add(-2*time.Minute)),
		state("cp-done", "cp", StateReady, now.Add(-time.Hour)),
		waitingNode("cp-wait", "cp", now.Add(-time.Minute), now, now.Add(time.Minute)),
		waitingNode("cp-wait-stale", "cp", now.Add(-time.Hour), now.Add(-13*time.Minute), time.Time{}),
		waitingNode("etcd-wait", "etcd", now.Add(-time.Minute), now, time.Time{}),
		state("w-hold", "workers", StateRebooting, now),
		waitingNode("w-wait", "workers", now.Add(-time.Minute), now, time.Time{}),
	}
	assert.Equal(t, []OrderBlocker{
		{Node: "cp-claim", Group: "cp", State: StateClaiming},
		{Node: "cp-hold", Group: "cp", State: StateRebooting},
		{Node: "cp-wait", Group: "cp", State: StateWaiting},
	}, OrderBlockers([]string{"cp"}, nodes, now, 0, time.Minute))
	assert.Len(t, OrderBlockers([]string{"cp", "etcd"}, nodes, now, 0, time.Minute), 4)
	assert.Empty(t, OrderBlockers(nil, nodes, now, 0, time.Minute))
	assert.Empty(t, OrderBlockers([]string{"gpu"}, nodes, now, 0, time.Minute))
}

// markWaiting writes the waiting marks of a node of group directly, as a replica
// holding its request would: last request at last, open until the time until (zero: none).
func markWaiting(t *testing.T, client kubernetes.Interface, name, group string, last, until time.Time) {
	t.Helper()
	a := map[string]any{
		AnnotationGroup:        group,
		AnnotationWaitingSince: last.Add(-time.Minute).UTC().Format(time.RFC3339Nano),
		AnnotationLastRequest:  last.UTC().Format(time.RFC3339Nano),
		AnnotationRequestUntil: nil,
	}
	if !until.IsZero() {
		a[AnnotationRequestUntil] = until.UTC().Format(time.RFC3339Nano)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels": map[string]any{LabelWaiting: "true"}, "annotations": a}})
	require.NoError(t, err)
	_, err = client.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)
}

// unmarkWaiting removes the waiting marks.
func unmarkWaiting(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	patch := []byte(`{"metadata":{"labels":{"` + LabelWaiting + `":null},"annotations":{"` + AnnotationWaitingSince +
		`":null,"` + AnnotationLastRequest + `":null,"` + AnnotationRequestUntil + `":null}}}`)
	_, err := client.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)
}

// Issue 17 item 4: a node of "workers" (after: [cp]) is refused with group_order,
// naming the nodes, while a node of cp holds, claims or waits; a stale cp waiter does
// not count; marks written between the check and the promotion are seen (the fresh
// read); and once cp is done, the worker is granted.
func TestGroupOrder(t *testing.T) {
	env := controlplane.Shared(t)
	cp := newFleet(t, env, "order-cp", 2, simkubelet.NodeOptions{})
	w := newFleet(t, env, "order-w", 1, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Policy: orderPolicy{after: map[string][]string{"workers": {"cp"}}}, Wait: 300 * time.Millisecond,
		ReservationTimeout: -1}) // reservations: TestGroupOrderHoldsBackReservations
	awaitCached(t, l, cp)
	awaitCached(t, l, w)
	ctx := t.Context()
	worker := w.names[0]
	refused := func(msg string, names ...string) {
		t.Helper()
		err := l.PreReboot(ctx, w.params(worker, "workers"))
		require.ErrorIs(t, err, fleetlock.ErrGroupOrder, msg)
		var ref *Refusal
		require.True(t, errors.As(err, &ref), msg)
		assert.Equal(t, ReasonRebootGroupOrder, ref.Reason, msg)
		for _, n := range names {
			assert.Contains(t, err.Error(), n, msg)
		}
		st, cordoned := nodeLockState(t, env.Client, worker)
		assert.Equal(t, StateReady, st.State, msg)
		assert.False(t, cordoned, msg)
	}

	// A cp node holds.
	require.NoError(t, l.PreReboot(ctx, cp.params(cp.names[0], "cp")))
	refused("a cp node holds", cp.names[0], `"cp"`)
	require.NoError(t, l.Release(ctx, cp.names[0]))
	awaitNoHolders(t, l, "cp")

	// A cp node waits (marks written directly), then its marks go stale.
	now := time.Now()
	markWaiting(t, env.Client, cp.names[1], "cp", now, now.Add(time.Minute))
	refused("a cp node waits with its request open", cp.names[1])
	markWaiting(t, env.Client, cp.names[1], "cp", now.Add(-5*time.Minute), time.Time{})
	refused("a cp node waits between its requests", cp.names[1])
	stale := now.Add(-DefaultWaiterTimeout - time.Minute)
	markWaiting(t, env.Client, cp.names[1], "cp", stale, time.Time{})
	awaitNotBlocking(t, l, cp.names[1])

	// Marks written after the worker's claim was checked, just before its promotion:
	// the fresh read sees them, whatever the cache shows.
	testHookAfterCheck = func(node string) {
		if node == worker {
			markWaiting(t, env.Client, cp.names[0], "cp", time.Now(), time.Now().Add(time.Minute))
		}
	}
	t.Cleanup(func() { testHookAfterCheck = nil })
	refused("a cp node began waiting just before the promotion", cp.names[0])
	testHookAfterCheck = nil
	unmarkWaiting(t, env.Client, cp.names[0])

	// cp done (a stale waiter left behind): the worker is granted.
	awaitNotBlocking(t, l, cp.names[0])
	require.NoError(t, l.PreReboot(ctx, w.params(worker, "workers")))
	st, _ := nodeLockState(t, env.Client, worker)
	assert.Equal(t, StateRebooting, st.State)

	// Groups without an order are not held back by anyone's: cp is granted while the
	// worker holds.
	require.NoError(t, l.PreReboot(ctx, cp.params(cp.names[0], "cp")))
}

// awaitNotBlocking waits until l's cache shows node name neither holding, claiming
// nor waiting (a stale waiter's marks may be there, or already removed).
func awaitNotBlocking(t *testing.T, l *Lock, name string) {
	t.Helper()
	require.Eventually(t, func() bool {
		n, ok := l.cachedNode(name)
		return ok && len(OrderBlockers([]string{n.Annotations[AnnotationGroup]}, []*corev1.Node{n}, time.Now(), 0, time.Minute)) == 0
	}, 10*time.Second, 10*time.Millisecond)
}

// Issue 17 item 4 with reservations: a worker that waits with no request open is not
// given a free slot while a cp node waits; once cp is done, it is.
func TestGroupOrderHoldsBackReservations(t *testing.T) {
	env := controlplane.Shared(t)
	cp := newFleet(t, env, "order-rcp", 1, simkubelet.NodeOptions{})
	w := newFleet(t, env, "order-rw", 1, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Policy: orderPolicy{after: map[string][]string{"workers": {"cp"}}},
		ReservationGrace: 100 * time.Millisecond, ReservationTimeout: 10 * time.Minute})
	awaitCached(t, l, cp)
	awaitCached(t, l, w)
	now := time.Now()
	markWaiting(t, env.Client, cp.names[0], "cp", now, now.Add(time.Minute)) // its request open: no reservation for it
	markWaiting(t, env.Client, w.names[0], "workers", now, time.Time{})
	for range 20 { // many rounds of the reservation loop
		time.Sleep(100 * time.Millisecond)
		st, cordoned := nodeLockState(t, env.Client, w.names[0])
		require.Equal(t, StateReady, st.State, "no slot reserved for the worker while cp waits")
		require.False(t, cordoned)
	}
	unmarkWaiting(t, env.Client, cp.names[0])
	require.Eventually(t, func() bool {
		st, _ := nodeLockState(t, env.Client, w.names[0])
		return st.State == StateRebooting
	}, 20*time.Second, 50*time.Millisecond, "reserved once cp is done")
}

// failWaitingList fails every List of the waiting nodes with a 500.
type failWaitingList struct{ rt http.RoundTripper }

func (f failWaitingList) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodGet && strings.Contains(req.URL.Query().Get("labelSelector"), LabelWaiting) {
		return nil, errors.New("injected: list of waiting nodes failed")
	}
	return f.rt.RoundTrip(req)
}

// Issue 17 item 4, fail closed: when the fresh read of the earlier groups' nodes
// fails, the worker is refused (api_unavailable), never granted, and leaves no claim.
func TestGroupOrderFailsClosed(t *testing.T) {
	env := controlplane.Shared(t)
	w := newFleet(t, env, "order-fc", 1, simkubelet.NodeOptions{})
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return failWaitingList{rt} })
	client := kubernetes.NewForConfigOrDie(cfg)
	l := startLock(t, client, Options{Policy: orderPolicy{after: map[string][]string{"workers": {"cp"}}}, Wait: 300 * time.Millisecond})
	awaitCached(t, l, w)
	err := l.PreReboot(t.Context(), w.params(w.names[0], "workers"))
	require.ErrorIs(t, err, fleetlock.ErrUnavailable)
	assert.NotErrorIs(t, err, fleetlock.ErrGroupOrder)
	st, cordoned := nodeLockState(t, env.Client, w.names[0])
	assert.Equal(t, StateReady, st.State)
	assert.False(t, cordoned)

	// A group without an order makes no such read: granted.
	require.NoError(t, l.PreReboot(context.WithoutCancel(t.Context()), w.params(w.names[0], "cp")))
}

// orderListsHook runs act before each of the fresh order read's LISTs (by LabelLock or
// LabelWaiting) once armed: act(0) before the first, act(1) before the second.
type orderListsHook struct {
	rt    http.RoundTripper
	mu    sync.Mutex
	armed bool
	calls int
	act   func(i int)
}

func (h *orderListsHook) RoundTrip(req *http.Request) (*http.Response, error) {
	sel := req.URL.Query().Get("labelSelector")
	if req.Method == http.MethodGet && (sel == LabelLock+"=true" || sel == LabelWaiting+"=true") {
		h.mu.Lock()
		if h.armed && h.calls < 2 {
			h.act(h.calls)
			h.calls++
		}
		h.mu.Unlock()
	}
	return h.rt.RoundTrip(req)
}

// A cp node that waits when the worker's fresh order read begins and holds when it
// ends (its own request was granted in between: a write that sets LabelLock and
// removes LabelWaiting at once) was in progress all along: the worker is refused. The
// read's two LISTs must not both miss it, whichever of them comes first.
func TestGroupOrderSeesWaiterPromotedDuringFreshRead(t *testing.T) {
	env := controlplane.Shared(t)
	cp := newFleet(t, env, "order-mid", 1, simkubelet.NodeOptions{})
	w := newFleet(t, env, "order-midw", 1, simkubelet.NodeOptions{})
	cpNode, worker := cp.names[0], w.names[0]
	hook := &orderListsHook{}
	hook.act = func(i int) {
		ctx := context.WithoutCancel(t.Context())
		switch i {
		case 0: // cp begins to wait, its request open
			markWaiting(t, env.Client, cpNode, "cp", time.Now(), time.Now().Add(time.Minute))
		case 1: // cp's request is granted: the promotion's write
			n := getNodeT(t, env.Client, cpNode)
			_, err := patchNode(ctx, env.Client, cpNode, write{resourceVersion: n.ResourceVersion, state: StateRebooting,
				group: "cp", since: time.Now(), bootID: n.Status.NodeInfo.BootID, wasUnsched: new(false), unschedulable: new(true)})
			require.NoError(t, err)
		}
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { hook.rt = rt; return hook })
	client := kubernetes.NewForConfigOrDie(cfg)
	l := startLock(t, client, Options{Policy: orderPolicy{after: map[string][]string{"workers": {"cp"}}}, Wait: 300 * time.Millisecond,
		ReservationTimeout: -1})
	awaitCached(t, l, cp)
	awaitCached(t, l, w)
	testHookAfterCheck = func(node string) {
		if node == worker { // the next two LISTs are the fresh order read's
			hook.mu.Lock()
			hook.armed = true
			hook.mu.Unlock()
		}
	}
	t.Cleanup(func() { testHookAfterCheck = nil })

	err := l.PreReboot(t.Context(), w.params(worker, "workers"))
	require.Equal(t, 2, hook.calls, "cp began waiting and was granted during the worker's fresh read")
	require.ErrorIs(t, err, fleetlock.ErrGroupOrder, "cp was in progress throughout the read")
	assert.Contains(t, err.Error(), cpNode)
	st, cordoned := nodeLockState(t, env.Client, worker)
	assert.Equal(t, StateReady, st.State)
	assert.False(t, cordoned)
}

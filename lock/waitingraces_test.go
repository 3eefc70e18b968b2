package lock

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// offsetClock is the real clock, off by d: a replica whose clock runs ahead (d > 0).
type offsetClock struct{ d time.Duration }

func (c offsetClock) Now() time.Time                  { return time.Now().Add(c.d) }
func (c offsetClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// closingPolicy refuses node once closed is set: its window closed.
type closingPolicy struct {
	testPolicy
	node   string
	closed *atomic.Bool
}

func (p closingPolicy) Admit(c Candidate) error {
	if c.Node.Name == p.node && p.closed.Load() {
		return NewRefusal(fleetlock.ErrWindowClosed, "window closed for "+p.node)
	}
	return nil
}

// A request that waits for a slot while its own node is granted one goes down the
// holder's path and is answered: it does not keep waiting behind this replica's
// earlier request, which waits for the very slot its node holds. Here the slot is
// reserved for it by a replica whose clock runs a minute ahead (the request's deadline
// has passed to it) and that has read a raised slot count (2) this replica has not
// read yet (1).
func TestWaitingRequestTakesItsNodesReservation(t *testing.T) {
	env := controlplane.Shared(t)
	f := newFleet(t, env, "own-hold", 3, simkubelet.NodeOptions{})
	first, second, holder := f.names[0], f.names[1], f.names[2]
	closed := &atomic.Bool{} // a's policy: second's window closes once it waits
	a := startLock(t, env.Client, Options{Wait: 20 * time.Second, ReservationTimeout: -1,
		Policy: closingPolicy{node: second, closed: closed}})
	awaitCached(t, a, f)
	require.NoError(t, a.PreReboot(t.Context(), f.params(holder, "default")))

	// Two requests wait on replica a, the first name's before the second's.
	resFirst := preRebootAsync(a, f, first)
	resSecond := preRebootAsync(a, f, second)
	for _, name := range []string{first, second} {
		awaitNode(t, env.Client, name, "marked as waiting", func(n *corev1.Node) bool { return n.Labels[LabelWaiting] == "true" })
	}
	require.Eventually(t, func() bool { // both wait for a free slot, neither claims
		a.contendersMu.Lock()
		defer a.contendersMu.Unlock()
		return len(a.slotWaiters["default"]) == 2
	}, 30*time.Second, 10*time.Millisecond)
	closed.Store(true) // a holder is not refused: its grant was admitted

	// Replica b runs a minute ahead: both requests' deadlines have passed to it. Its
	// policy has 2 slots and refuses the first node: it reserves the second slot for
	// the second node.
	rec := events.NewFakeRecorder(100)
	b := startLock(t, env.Client, Options{Recorder: rec, Clock: offsetClock{time.Minute}, StaleClaimAge: time.Hour, WaiterTimeout: time.Hour,
		ReservationGrace: 100 * time.Millisecond, ReservationTimeout: 10 * time.Minute,
		Policy: refusingPolicy{testPolicy: testPolicy{slots: 2}, refuse: map[string]bool{first: true}}})
	awaitCached(t, b, f)

	select {
	case r := <-resSecond:
		require.NoError(t, r.err, "its own node holds: the request takes the reservation and is told to reboot")
	case <-time.After(60 * time.Second):
		t.Fatal("the request never answered")
	}
	n := getNodeT(t, env.Client, second)
	require.Equal(t, StateRebooting, lockOf(n).State)
	require.False(t, reserved(n), "the reservation was taken")
	require.Contains(t, <-rec.Events, ReasonSlotReserved, "the slot was reserved by replica b")
	<-resFirst // no slot for it: held
}

// gapPolicy refuses group "closed" (its window is closed) and, in any group, a node
// whose group released a slot less than an hour ago (policy's MinGap).
type gapPolicy struct{ testPolicy }

func (gapPolicy) Admit(c Candidate) error {
	if c.Group == "closed" {
		return NewRefusal(fleetlock.ErrWindowClosed, "group closed: no reboot window open")
	}
	if !c.LastRelease.IsZero() && time.Since(c.LastRelease) < time.Hour {
		return NewRefusal(fleetlock.ErrRebootGap, "group "+c.Group+": last reboot ended less than an hour ago")
	}
	return nil
}

// A node whose Zincati moved to another group, and whose request there is refused,
// does not take its release in its old group with it: the old group's minimum gap
// still counts from that release.
func TestWaitingInAnotherGroupKeepsTheOldGroupsGap(t *testing.T) {
	env := controlplane.Shared(t)
	f := newFleet(t, env, "gap-move", 2, simkubelet.NodeOptions{})
	moved, other := f.names[0], f.names[1]
	l := startLock(t, env.Client, Options{Policy: gapPolicy{}, Wait: 300 * time.Millisecond, ReservationTimeout: -1})
	awaitCached(t, l, f)
	ctx := t.Context()
	require.NoError(t, l.PreReboot(ctx, f.params(moved, "default")))
	require.NoError(t, l.Release(ctx, moved))
	awaitNoHolders(t, l, "default")
	require.ErrorIs(t, l.PreReboot(ctx, f.params(other, "default")), fleetlock.ErrRebootGap, "the gap after the release")

	// moved's Zincati now asks in group "closed": refused, it waits there.
	require.ErrorIs(t, l.PreReboot(ctx, f.params(moved, "closed")), fleetlock.ErrWindowClosed)
	require.Eventually(t, func() bool {
		n, ok := l.cachedNode(moved)
		w, waits := WaiterOf(n)
		return ok && waits && w.Group == "closed"
	}, 10*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, l.PreReboot(ctx, f.params(other, "default")), fleetlock.ErrRebootGap,
		"default's last release is still an hour's gap away")
	st, _ := nodeLockState(t, env.Client, other)
	require.Equal(t, StateReady, st.State)
}

// A request whose Node is deleted while it waits for a slot, and replaced by a Node of
// the same name for another machine (a cloud reusing a private DNS name), ends with
// node_gone: it never claims, cordons or drains the new machine, nor answers 2xx to
// the old one on the new one's behalf.
func TestWaitingRequestEndsWhenItsNodeIsReplaced(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	holder, name := "replaced-a-"+c.id, "replaced-b-"+c.id
	_, holderID := c.addNode(holder, "")
	old, id := c.addNode(name, "")
	l, _ := c.lock(Options{Wait: 40 * time.Second, ReservationTimeout: -1})
	awaitCachedName(t, l, holder)
	awaitCachedName(t, l, name)
	require.NoError(t, l.PreReboot(ctx, fleetlock.ClientParams{ID: holderID, Group: "default"}))

	answer := make(chan error, 1)
	go func() { answer <- l.PreReboot(ctx, fleetlock.ClientParams{ID: id, Group: "default"}) }()
	awaitNode(t, c.env.Client, name, "marked as waiting", func(n *corev1.Node) bool { return n.Labels[LabelWaiting] == "true" })
	require.NoError(t, c.env.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}))
	fresh, freshID := c.addNode(name, "")
	require.NotEqual(t, old.UID, fresh.UID)
	require.NotEqual(t, id, freshID)
	awaitCachedUID(t, l, name, fresh.UID)
	require.NoError(t, l.Release(ctx, holder))

	var err error
	select {
	case err = <-answer:
	case <-time.After(time.Minute):
		t.Fatal("the waiting request never answered")
	}
	require.ErrorIs(t, err, fleetlock.ErrNodeGone)
	n := getNodeT(t, c.env.Client, name)
	require.Equal(t, fresh.UID, n.UID)
	require.Equal(t, StateReady, lockOf(n).State, "no slot for the new machine, which did not ask")
	require.False(t, n.Spec.Unschedulable, "the new machine is not cordoned")
}

// A request cut (its context cancelled, as when a proxy drops Zincati's connection)
// just as its check tells it to withdraw still withdraws its claim and records its
// end: no claim left to go stale, blocking later names for StaleClaimAge, and no
// request deadline left on the node that says it is still asking.
func TestRequestCutAtItsWithdrawalWithdraws(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "cut-withdraw", 2, simkubelet.NodeOptions{})
	waiter, holder := f.names[0], f.names[1]
	l := startLock(t, env.Client, Options{Wait: 30 * time.Second, ReservationTimeout: -1})
	awaitCached(t, l, f)
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)

	ctx1, drop := context.WithCancel(ctx)
	testHookAfterCheck = func(node string) {
		if node == waiter {
			drop() // the verdict is withdraw: the holder takes the only slot
		}
	}
	t.Cleanup(func() { testHookAfterCheck = nil })
	require.Error(t, l.PreReboot(ctx1, f.params(waiter, "default")))
	testHookAfterCheck = nil
	n := getNodeT(t, env.Client, waiter)
	require.Equal(t, StateReady, lockOf(n).State, "the claim was withdrawn")
	require.NotContains(t, n.Annotations, AnnotationRequestUntil, "the request's end recorded")
}

// cutAfterApply is a transport under which the first claim PATCH of node is applied by
// the API server, and then the request's context is cut (cut runs) before the answer
// reaches the client, as when Zincati drops its request at that moment.
type cutAfterApply struct {
	rt   http.RoundTripper
	node string
	cut  func()
	once sync.Once
}

func (c *cutAfterApply) RoundTrip(req *http.Request) (*http.Response, error) {
	isClaim := false
	if req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/nodes/"+c.node) && req.GetBody != nil {
		if b, err := req.GetBody(); err == nil {
			body, _ := io.ReadAll(b)
			isClaim = strings.Contains(string(body), `"`+string(StateClaiming)+`"`)
		}
	}
	if !isClaim {
		return c.rt.RoundTrip(req)
	}
	resp, err := c.rt.RoundTrip(req.WithContext(context.WithoutCancel(req.Context())))
	c.once.Do(c.cut)
	if cerr := req.Context().Err(); cerr != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, cerr
	}
	return resp, err
}

// A request dropped while its claim is on the wire leaves no claim behind. Before, the
// claim the API server had applied was unknown to the request, which ended without
// withdrawing it: the node stayed Claiming, holding back later names, until the claim
// went stale, and its request-until mark stayed (it looked like it was still asking).
func TestRequestCutDuringItsClaimLeavesNoClaim(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "cut-claim", 2, simkubelet.NodeOptions{})
	waiter, holder := f.names[0], f.names[1]
	ctx1, drop := context.WithCancel(ctx)
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &cutAfterApply{rt: rt, node: waiter, cut: drop} })
	l := startLock(t, kubernetes.NewForConfigOrDie(cfg), Options{Wait: 30 * time.Second, ReservationTimeout: -1})
	awaitCached(t, l, f)
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)

	require.Error(t, l.PreReboot(ctx1, f.params(waiter, "default")))
	n := awaitNode(t, env.Client, waiter, "the claim withdrawn and the request's end recorded", func(n *corev1.Node) bool {
		_, open := n.Annotations[AnnotationRequestUntil]
		return lockOf(n).State == StateReady && !open
	})
	assert.Equal(t, StateReady, lockOf(n).State)
}

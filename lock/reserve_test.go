package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
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
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// markWaiter writes the waiting marks of a node whose last request, in group, ended at
// last (no request open), as a request of another replica would have left them.
func markWaiter(t *testing.T, client kubernetes.Interface, name, group string, last time.Time) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels": map[string]any{LabelWaiting: "true"},
		"annotations": map[string]any{
			AnnotationGroup:        group,
			AnnotationWaitingSince: stamp(last.Add(-time.Minute)),
			AnnotationLastRequest:  stamp(last),
		},
	}})
	require.NoError(t, err)
	_, err = client.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, b, metav1.PatchOptions{})
	require.NoError(t, err)
}

// reserved reports whether n holds a slot reserved for it.
func reserved(n *corev1.Node) bool {
	_, ok := ReservedUntil(n)
	return ok
}

// (a) A waiter whose request has ended gets the slot that frees: reserved for it,
// its node cordoned and its drain started with no request open; its next pre-reboot
// takes the reservation and is answered 2xx as soon as the drain is over, without a
// claim of its own.
func TestReservedWaiterDrainedAndAnsweredAtOnce(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "reserve-a", 2, simkubelet.NodeOptions{})
	drainer := locktest.NewGated()
	l := startLockWith(t, env.Client, drainer, Options{Wait: 30 * time.Second, ReservationGrace: 200 * time.Millisecond,
		ReservationTimeout: 10 * time.Minute})
	awaitCached(t, l, f)
	waiter, holder := f.names[0], f.names[1]
	res := preRebootAsync(l, f, holder)
	require.Equal(t, holder, <-drainer.Started)
	drainer.Finish(holder)
	require.NoError(t, (<-res).err)

	// The waiter asks, waits, and its request ends (Zincati's request cut by a proxy).
	ctx1, drop := context.WithCancel(ctx)
	ended := make(chan error, 1)
	go func() { ended <- l.PreReboot(ctx1, f.params(waiter, "default")) }()
	awaitNode(t, env.Client, waiter, "marked as waiting", func(n *corev1.Node) bool { return n.Labels[LabelWaiting] == "true" })
	drop()
	require.Error(t, <-ended)
	awaitNode(t, env.Client, waiter, "its request ended", func(n *corev1.Node) bool {
		w, ok := WaiterOf(n)
		return ok && w.RequestUntil.IsZero()
	})

	require.NoError(t, l.Release(ctx, holder))
	n := awaitNode(t, env.Client, waiter, "slot reserved", reserved)
	assert.True(t, n.Spec.Unschedulable, "cordoned by the reservation")
	assertNoWaitingMarks(t, n)
	until, _ := ReservedUntil(n)
	assert.WithinDuration(t, time.Now().Add(10*time.Minute), until, time.Minute)
	reservedAt := GrantedAt(n)
	select {
	case started := <-drainer.Started:
		require.Equal(t, waiter, started, "its drain starts with no request open")
	case <-time.After(30 * time.Second):
		t.Fatal("the reserved node's drain did not start")
	}
	drainer.Finish(waiter)

	require.NoError(t, l.PreReboot(ctx, f.params(waiter, "default")), "2xx on arrival: the drain is over")
	n = getNodeT(t, env.Client, waiter)
	assert.False(t, reserved(n), "the request took the reservation")
	assert.NotContains(t, n.Annotations, AnnotationReservedUntil)
	assert.Equal(t, reservedAt, GrantedAt(n), "no claim of its own: the reservation's grant")
	assert.True(t, n.Spec.Unschedulable)
	assert.InDelta(t, 1, testutil.ToFloat64(l.reservations.WithLabelValues("default", "reserved")), 0)
	assert.InDelta(t, 1, testutil.ToFloat64(l.reservations.WithLabelValues("default", "taken")), 0)
}

// (b) The Done-when: a reservation its node does not take by the deadline is
// given back, the node uncordoned (reboot-manager cordoned it) and an Event posted;
// the next waiter is served then.
func TestUnclaimedReservationGivenBack(t *testing.T) {
	env := controlplane.Shared(t)
	f := newFleet(t, env, "reserve-b", 2, simkubelet.NodeOptions{})
	first, next := f.names[0], f.names[1]
	now := time.Now()
	markWaiter(t, env.Client, first, "default", now)
	markWaiter(t, env.Client, next, "default", now)
	rec := events.NewFakeRecorder(100)
	l := startLock(t, env.Client, Options{ReservationGrace: 200 * time.Millisecond, ReservationTimeout: 2 * time.Second,
		WaiterTimeout: time.Hour, Recorder: rec})
	awaitCached(t, l, f)

	n := awaitNode(t, env.Client, first, "reserved for the first waiter", reserved)
	assert.True(t, n.Spec.Unschedulable)
	assert.Equal(t, "false", n.Annotations[AnnotationWasUnschedulable], "cordoned by reboot-manager")
	assert.Equal(t, StateReady, lockOf(getNodeT(t, env.Client, next)).State, "one slot: the next waits")

	n = awaitNode(t, env.Client, first, "given back", func(n *corev1.Node) bool { return lockOf(n).State == StateReady })
	assert.False(t, n.Spec.Unschedulable, "uncordoned: reboot-manager had cordoned it")
	assert.NotContains(t, n.Annotations, AnnotationReservedUntil)
	assertNoWaitingMarks(t, n) // it leaves the queue: it re-enters when it asks again
	assert.NotContains(t, n.Labels, LabelLock)
	assert.NotContains(t, n.Annotations, AnnotationReleased, "no reboot: the group's minimum gap does not start again")

	n = awaitNode(t, env.Client, next, "the next waiter served", reserved)
	assert.True(t, n.Spec.Unschedulable)
	var posted []string
	for len(rec.Events) > 0 {
		posted = append(posted, <-rec.Events)
	}
	assert.True(t, containsPrefix(posted, "Normal "+ReasonReservationExpired), "Events: %v", posted)
	assert.True(t, containsPrefix(posted, "Normal "+ReasonSlotReserved), "Events: %v", posted)
	assert.GreaterOrEqual(t, testutil.ToFloat64(l.reservations.WithLabelValues("default", "reserved")), 2.0, "first and next")
	assert.InDelta(t, 1, testutil.ToFloat64(l.reservations.WithLabelValues("default", "given_back")), 0)
}

func containsPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// refusingPolicy admits every node but those it names.
type refusingPolicy struct {
	testPolicy
	refuse map[string]bool
}

func (p refusingPolicy) Admit(c Candidate) error {
	if p.refuse[c.Node.Name] {
		return NewRefusal(fleetlock.ErrNodeHeld, "node "+c.Node.Name+" held by the test")
	}
	return nil
}

// (c) A reservation goes to the first waiter in the lock's order that still asks and
// that the policy admits: not to one that stopped asking (stale), not to one the
// policy refuses.
func TestReservationSkipsStaleAndRefusedWaiters(t *testing.T) {
	env := controlplane.Shared(t)
	f := newFleet(t, env, "reserve-c", 3, simkubelet.NodeOptions{})
	stale, refused, admitted := f.names[0], f.names[1], f.names[2]
	now := time.Now()
	markWaiter(t, env.Client, stale, "default", now.Add(-time.Hour))
	markWaiter(t, env.Client, refused, "default", now)
	markWaiter(t, env.Client, admitted, "default", now)
	l := startLock(t, env.Client, Options{ReservationGrace: 200 * time.Millisecond, ReservationTimeout: 10 * time.Minute,
		WaiterTimeout: 10 * time.Minute, Policy: refusingPolicy{refuse: map[string]bool{refused: true}}})
	awaitCached(t, l, f)

	n := awaitNode(t, env.Client, admitted, "reserved for the first admitted fresh waiter", reserved)
	assert.True(t, n.Spec.Unschedulable)
	for _, name := range []string{stale, refused} {
		n := getNodeT(t, env.Client, name)
		assert.Equal(t, StateReady, lockOf(n).State, "%s got no slot", name)
		assert.False(t, n.Spec.Unschedulable, "%s not cordoned", name)
	}
	_, ok := WaiterOf(getNodeT(t, env.Client, refused))
	assert.True(t, ok, "the refused node still waits")
}

// The race between a reservation's node asking and the give-back at its deadline is
// decided by their conditioned writes: here the request takes the reservation between
// the give-back's fresh read and its write; the give-back's write fails with a 409,
// it reads again, sees the reservation taken, and releases nothing.
func TestReservationTakenWhileGivenBack(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "reserve-race", 1, simkubelet.NodeOptions{})
	name := f.names[0]
	markWaiter(t, env.Client, name, "default", time.Now())
	var (
		once   sync.Once
		reads  atomic.Int32
		l      *Lock
		ready  = make(chan struct{})
		answer = make(chan error, 1)
	)
	testHookBeforeGiveBack = func(node string) {
		reads.Add(1)
		once.Do(func() {
			<-ready
			answer <- l.PreReboot(ctx, f.params(node, "default"))
		})
	}
	t.Cleanup(func() { testHookBeforeGiveBack = nil })
	l = startLock(t, env.Client, Options{Wait: 30 * time.Second, ReservationGrace: 200 * time.Millisecond,
		ReservationTimeout: time.Second, WaiterTimeout: time.Hour})
	awaitCached(t, l, f)
	close(ready)

	var err error
	select {
	case err = <-answer:
	case <-time.After(60 * time.Second):
		t.Fatal("the give-back never ran")
	}
	require.NoError(t, err, "the request took the reservation and was told to reboot")
	require.Eventually(t, func() bool { return reads.Load() >= 2 }, 30*time.Second, 10*time.Millisecond,
		"the give-back's write failed with a 409 and it read the node again")
	time.Sleep(time.Second) // the give-back's retry, had it released, would show by now
	n := getNodeT(t, env.Client, name)
	assert.Equal(t, StateRebooting, lockOf(n).State, "still holding: the give-back lost")
	assert.True(t, n.Spec.Unschedulable, "still cordoned")
	assert.False(t, reserved(n))
}

// Two replicas run the reservation loop on one control plane: they never grant more
// than the slots, and reserve the free slot once.
func TestReservationByTwoReplicas(t *testing.T) {
	env := controlplane.Shared(t)
	f := newFleet(t, env, "reserve-two", 6, simkubelet.NodeOptions{})
	watcher := watchHolders(t, env.Client, f)
	now := time.Now()
	for _, name := range f.names {
		markWaiter(t, env.Client, name, "default", now)
	}
	opts := Options{ReservationGrace: 50 * time.Millisecond, ReservationTimeout: 10 * time.Minute, WaiterTimeout: time.Hour,
		Policy: testPolicy{slots: 2}}
	l1 := startLock(t, env.Client, opts)
	l2 := startLock(t, env.Client, opts)
	awaitCached(t, l1, f)
	awaitCached(t, l2, f)

	for _, name := range f.names[:2] {
		awaitNode(t, env.Client, name, "reserved", reserved)
	}
	time.Sleep(2 * time.Second) // a third reservation, if any, would come within this
	assert.LessOrEqual(t, watcher.max(), 2, "never more holders than slots")
	for _, name := range f.names[2:] {
		n := getNodeT(t, env.Client, name)
		assert.Equal(t, StateReady, lockOf(n).State, "%s waits", name)
		assert.False(t, n.Spec.Unschedulable, "%s not cordoned", name)
	}
	// A holder gives its slot back; the next waiter is reserved the freed slot once.
	require.NoError(t, l1.Release(t.Context(), f.names[0]))
	awaitNode(t, env.Client, f.names[2], "the freed slot reserved", reserved)
	time.Sleep(2 * time.Second)
	assert.LessOrEqual(t, watcher.max(), 2, "never more holders than slots")
	for _, name := range f.names[3:] {
		assert.Equal(t, StateReady, lockOf(getNodeT(t, env.Client, name)).State, "%s waits", name)
	}
}

// TestContention with reservations in play: two replicas reserve free slots for the
// waiters whose requests ended, after a grace of milliseconds, and give them back
// after a second, while every node's requests (two per replica) come and go, with a
// random pause between check and promotion, and holders are released under them.
// Never more holders than slots, at any moment a watch sees.
func TestContentionWithReservations(t *testing.T) {
	env := controlplane.Shared(t)
	testHookAfterCheck = func(string) { time.Sleep(rand.N(15 * time.Millisecond)) }
	t.Cleanup(func() { testHookAfterCheck = nil })
	for _, slots := range []int{1, 3} {
		t.Run(fmt.Sprintf("slots=%d", slots), func(t *testing.T) {
			const nodes, rounds = 12, 6
			f := newFleet(t, env, fmt.Sprintf("contend-res-s%d", slots), nodes, simkubelet.NodeOptions{})
			watcher := watchHolders(t, env.Client, f)
			reservations := watchReservations(t, env.Client, f)
			opts := Options{Policy: testPolicy{slots: slots}, Wait: 300 * time.Millisecond,
				ReservationGrace: 20 * time.Millisecond, ReservationTimeout: time.Second, WaiterTimeout: time.Hour}
			replicas := []*Lock{startLock(t, env.Client, opts), startLock(t, env.Client, opts)}
			for _, l := range replicas {
				awaitCached(t, l, f)
			}
			ctx := t.Context()
			granted := 0
			for round := range rounds {
				var mu sync.Mutex
				var wg sync.WaitGroup
				for _, name := range f.names {
					for _, l := range replicas {
						for range 2 {
							wg.Go(func() {
								time.Sleep(rand.N(200 * time.Millisecond)) // staggered arrivals
								err := l.PreReboot(ctx, f.params(name, "default"))
								if err == nil {
									mu.Lock()
									granted++
									mu.Unlock()
									return
								}
								if !errors.Is(err, fleetlock.ErrLockHeld) {
									t.Errorf("round %d %s: %v", round, name, err)
								}
							})
						}
					}
				}
				// Holders are released (an operator) while requests come and go.
				for range 5 {
					time.Sleep(rand.N(150 * time.Millisecond))
					l := replicas[rand.N(2)]
					for _, name := range f.names {
						if n, ok := l.cachedNode(name); ok && lockOf(n).holding() {
							if err := l.Release(ctx, name); err != nil && !errors.Is(err, ErrNotHolder) {
								t.Errorf("release %s: %v", name, err)
							}
						}
					}
				}
				wg.Wait()
				// No request open: the slots freed now are reserved; the next round's
				// requests race with their give-back, or come after it.
				for _, name := range f.names {
					if err := replicas[round%2].Release(ctx, name); err != nil && !errors.Is(err, ErrNotHolder) {
						t.Errorf("release %s: %v", name, err)
					}
				}
				time.Sleep(rand.N(1500 * time.Millisecond))
			}
			// Reservations of the waiters left run out and are given back.
			time.Sleep(2 * time.Second)
			assert.LessOrEqual(t, watcher.max(), slots, "at some moment more nodes held than slots")
			t.Logf("slots=%d: %d rounds of %d nodes x 2 replicas x 2 requests, %d grants to requests, %d reservations, most holding at once: %d",
				slots, rounds, nodes, granted, reservations.count(), watcher.max())
			assert.Positive(t, reservations.count(), "reservations were in play")
		})
	}
}

// reservationsWatcher counts, through a watch, the reservations made (promotions that
// wrote AnnotationReservedUntil) on a fleet's nodes.
type reservationsWatcher struct {
	mu   sync.Mutex
	seen map[string]bool // node/promotion
}

func watchReservations(t *testing.T, client kubernetes.Interface, f fleet) *reservationsWatcher {
	t.Helper()
	r := &reservationsWatcher{seen: map[string]bool{}}
	watchFleet(t, client, f, func(_ watch.EventType, n *corev1.Node) {
		if reserved(n) {
			r.mu.Lock()
			r.seen[n.Name+"/"+n.Annotations[AnnotationSince]] = true
			r.mu.Unlock()
		}
	})
	return r
}

func (r *reservationsWatcher) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

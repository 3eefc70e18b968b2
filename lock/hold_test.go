package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

func startLockWith(t *testing.T, client kubernetes.Interface, drainer Drainer, opts Options) *Lock {
	t.Helper()
	l, err := New(client, drainer, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	require.NoError(t, l.Start(ctx))
	return l
}

// eventsOnly turns off the fallback timers of the lock's waits for the test: a held
// request then answers before its deadline only if the event it waits for (a drain's
// end, a release, a node Ready) woke it. No latency is measured.
func eventsOnly(t *testing.T) {
	t.Helper()
	fallbackTimers = false
	t.Cleanup(func() { fallbackTimers = true })
}

// eventWait is how long a test waits for an answer woken by an event. With
// eventsOnly no timer of the lock can answer, and the tests that use it give their
// requests 2 minutes: an answer within eventWait was woken by an event. Unrelated
// events (another node's update, a loop's write) also wake waits, every 20 to 30 s
// in these tests, which is why eventWait stays under that; on an idle machine the
// answer takes milliseconds, and 15 s leaves room for a loaded CI machine.
const eventWait = 15 * time.Second

// result is what a PreReboot call returned, and when.
type result struct {
	err error
	at  time.Time
}

func preRebootAsync(l *Lock, f fleet, name string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		err := l.PreReboot(context.Background(), f.params(name, "default"))
		ch <- result{err, time.Now()}
	}()
	return ch
}

// A held pre-reboot request answers "reboot now" the moment its drain ends, not at
// the next poll of Zincati.
func TestHeldRequestAnsweredWhenDrained(t *testing.T) {
	eventsOnly(t)
	env := controlplane.Shared(t)
	f := newFleet(t, env, "hold-drain", 1, simkubelet.NodeOptions{})
	name := f.names[0]
	drainer := locktest.NewGated()
	l := startLockWith(t, env.Client, drainer, Options{Wait: 30 * time.Second})
	awaitCached(t, l, f)

	asked := time.Now()
	res := preRebootAsync(l, f, name)
	select {
	case started := <-drainer.Started:
		require.Equal(t, name, started)
	case r := <-res:
		t.Fatalf("answered before its drain started: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not start")
	}
	select {
	case r := <-res:
		t.Fatalf("answered while draining: %v", r.err)
	case <-time.After(2 * time.Second):
	}
	finished := time.Now()
	drainer.Finish(name)
	select {
	case r := <-res:
		require.NoError(t, r.err, "granted once drained")
		latency := r.at.Sub(finished)
		t.Logf("asked at 0s, drain finished at %s, answered %s later", finished.Sub(asked).Round(time.Millisecond), latency.Round(time.Microsecond))
	case <-time.After(eventWait):
		t.Fatal("no answer within eventWait of the drain's end")
	}
	st, unschedulable := nodeLockState(t, env.Client, name)
	assert.Equal(t, StateRebooting, st.State)
	assert.True(t, unschedulable)
}

// A request held while another node holds the only slot is granted as soon as that
// node's steady-state releases it.
func TestHeldRequestGrantedWhenSlotFreed(t *testing.T) {
	eventsOnly(t)
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "hold-slot", 2, simkubelet.NodeOptions{})
	l := startLock(t, env.Client, Options{Wait: 30 * time.Second})
	awaitCached(t, l, f)
	// The waiter's name comes first: alphabetical order gives it no way past a holder.
	waiter, holder := f.names[0], f.names[1]
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)

	res := preRebootAsync(l, f, waiter)
	select {
	case r := <-res:
		t.Fatalf("answered while the slot was held: %v", r.err)
	case <-time.After(2 * time.Second):
	}
	st, _ := nodeLockState(t, env.Client, waiter)
	assert.Equal(t, StateReady, st.State, "a waiter behind a holder keeps no claim while it waits")

	releasing := time.Now()
	released, err := l.SteadyState(ctx, f.params(holder, "default"))
	require.NoError(t, err)
	require.True(t, released)
	releasedAt := time.Now()
	select {
	case r := <-res:
		require.NoError(t, r.err, "granted once the slot is free")
		latency := r.at.Sub(releasedAt)
		t.Logf("release took %s; the waiter was granted %s after it returned", releasedAt.Sub(releasing).Round(time.Microsecond), latency.Round(time.Microsecond))
	case <-time.After(eventWait):
		t.Fatal("not granted within eventWait of the release")
	}
	st, _ = nodeLockState(t, env.Client, waiter)
	assert.Equal(t, StateRebooting, st.State)
}

// A held request that runs out of time answers "not yet" and leaves no claim and no
// lock label behind, whether it was waiting for a holder (its claim withdrawn before
// the wait) or for a later claimant to withdraw (its claim withdrawn on the way out).
func TestHeldRequestTimesOutWithoutClaim(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	assertNoClaim := func(t *testing.T, name string) {
		t.Helper()
		n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, StateReady, lockOf(n).State, "no claim left on %s", name)
		assert.NotContains(t, n.Labels, LabelLock, "no lock label left on %s", name)
	}

	t.Run("behind a holder", func(t *testing.T) {
		f := newFleet(t, env, "held-holder", 3, simkubelet.NodeOptions{})
		l := startLock(t, env.Client, Options{Wait: 500 * time.Millisecond})
		awaitCached(t, l, f)
		holder := f.names[1]
		require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
		awaitState(t, l, holder, StateRebooting)
		for _, waiter := range []string{f.names[0], f.names[2]} { // a name before the holder's, one after
			start := time.Now()
			err := l.PreReboot(ctx, f.params(waiter, "default"))
			took := time.Since(start)
			var held *HeldError
			require.ErrorAs(t, err, &held, "%s", waiter)
			assert.Equal(t, []string{holder}, held.Holders)
			assert.GreaterOrEqual(t, took, 375*time.Millisecond, "held for 3/4 of Wait at least")
			assert.Less(t, took, 5*time.Second)
			assertNoClaim(t, waiter)
		}
	})

	t.Run("behind a later claimant", func(t *testing.T) {
		// A live claim by a later name: the request keeps its own claim and waits for
		// the later one to withdraw, which it never does here. The wait for later
		// claimants lasts at least tieWait, whatever Options.Wait says.
		f := newFleet(t, env, "held-tie", 2, simkubelet.NodeOptions{})
		asker, later := f.names[0], f.names[1]
		n, err := env.Client.CoreV1().Nodes().Get(ctx, later, metav1.GetOptions{})
		require.NoError(t, err)
		_, err = env.Client.CoreV1().Nodes().Patch(ctx, later, "application/merge-patch+json",
			write{resourceVersion: n.ResourceVersion, state: StateClaiming, group: "default", since: time.Now()}.patch(),
			metav1.PatchOptions{})
		require.NoError(t, err)
		l := startLock(t, env.Client, Options{Wait: 500 * time.Millisecond})
		awaitCached(t, l, f)
		start := time.Now()
		err = l.PreReboot(ctx, f.params(asker, "default"))
		took := time.Since(start)
		var held *HeldError
		require.ErrorAs(t, err, &held)
		assert.GreaterOrEqual(t, took, tieWait, "waited tieWait for the later claimant")
		assertNoClaim(t, asker)
		st, _ := nodeLockState(t, env.Client, later)
		assert.Equal(t, StateClaiming, st.State, "someone else's live claim is left alone")
	})
}

// When a slot frees, only the first of a replica's waiters in name order re-claims:
// the handover costs the winner's claim and promotion, not a claim, a LIST and a
// withdrawal for every waiter.
func TestHandoverWakesOnlyTheFirstWaiter(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	const waiters = 8
	f := newFleet(t, env, "hold-herd", waiters+1, simkubelet.NodeOptions{})
	cfg, counter := env.CountingConfig()
	l := startLock(t, kubernetes.NewForConfigOrDie(cfg), Options{Wait: time.Minute})
	awaitCached(t, l, f)
	holder := f.names[waiters] // the last name: every waiter comes before it
	require.NoError(t, l.PreReboot(ctx, f.params(holder, "default")))
	awaitState(t, l, holder, StateRebooting)

	results := make([]<-chan result, waiters)
	for i := range waiters {
		results[i] = preRebootAsync(l, f, f.names[i])
	}
	// Every waiter claims once on arrival, sees the holder and withdraws.
	require.Eventually(t, func() bool {
		objs, _ := l.nodes.GetIndexer().ByIndex(byGroup, "default")
		return len(objs) == 1 // the holder alone carries the lock label
	}, 10*time.Second, 50*time.Millisecond)
	time.Sleep(time.Second)

	before := resourceRequests(counter)
	released, err := l.SteadyState(ctx, f.params(holder, "default"))
	require.NoError(t, err)
	require.True(t, released)
	select {
	case r := <-results[0]:
		require.NoError(t, r.err, "the first name is granted")
	case <-time.After(10 * time.Second):
		t.Fatal("not granted 10s after the release")
	}
	time.Sleep(time.Second) // what the others would do, they do at once
	after := resourceRequests(counter)
	patches := after["patch nodes"] - before["patch nodes"]
	lists := after["list nodes"] - before["list nodes"]
	t.Logf("handover to the first of %d waiters: %d node patches (release included), %d LISTs", waiters, patches, lists)
	assert.LessOrEqual(t, patches, 3, "release, claim, promote")
	assert.LessOrEqual(t, lists, 1, "the winner's check")
	for i := 1; i < waiters; i++ {
		st, _ := nodeLockState(t, env.Client, f.names[i])
		assert.Equal(t, StateReady, st.State, "%s keeps waiting without a claim", f.names[i])
	}
}

package lock

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// Every node of a group asks at once, through two lock instances (two replicas) and
// from two goroutines per node per instance, round after round: never more than
// slots nodes hold, and every round grants someone.
func TestContention(t *testing.T) {
	env := controlplane.Shared(t)
	// A random pause between check and promotion widens the race window that an unsafe
	// rule would lose in (e.g. promoting past a later claimant that is about to promote).
	testHookAfterCheck = func(string) { time.Sleep(rand.N(15 * time.Millisecond)) }
	t.Cleanup(func() { testHookAfterCheck = nil })
	for _, slots := range []int{1, 3} {
		t.Run(fmt.Sprintf("slots=%d", slots), func(t *testing.T) {
			const nodes, rounds = 20, 8
			f := newFleet(t, env, fmt.Sprintf("contend-s%d", slots), nodes, simkubelet.NodeOptions{})
			watcher := watchHolders(t, env.Client, f)
			// Requests alone: every holder here was granted to a request of this round.
			// TestContentionWithReservations puts reservations in play.
			opts := Options{Policy: testPolicy{slots: slots}, Wait: 300 * time.Millisecond, ReservationTimeout: -1}
			replicas := []*Lock{startLock(t, env.Client, opts), startLock(t, env.Client, opts)}
			for _, l := range replicas {
				awaitCached(t, l, f)
			}
			ctx := t.Context()
			totalGranted := 0
			for round := range rounds {
				var mu sync.Mutex
				granted := map[string]bool{}
				var wg sync.WaitGroup
				start := make(chan struct{})
				for _, name := range f.names {
					for _, l := range replicas {
						for range 2 {
							wg.Go(func() {
								<-start
								time.Sleep(rand.N(30 * time.Millisecond)) // staggered arrivals
								err := l.PreReboot(ctx, f.params(name, "default"))
								if err == nil {
									mu.Lock()
									granted[name] = true
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
				close(start)
				wg.Wait()
				require.NotEmpty(t, granted, "round %d: nobody granted", round)
				require.LessOrEqual(t, len(granted), slots, "round %d: granted %v", round, granted)
				totalGranted += len(granted)

				list, err := env.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LabelLock + "=true"})
				require.NoError(t, err)
				holders := 0
				for _, n := range list.Items {
					st := lockOf(&n)
					if st.holding() {
						holders++
						assert.True(t, granted[n.Name], "round %d: %s holds but was not granted", round, n.Name)
						assert.True(t, n.Spec.Unschedulable, "a holder is cordoned")
					}
					assert.NotEqual(t, StateClaiming, st.State, "round %d: claim left behind on %s", round, n.Name)
				}
				require.Equal(t, len(granted), holders)
				for name := range granted {
					require.NoError(t, env.Kubelet.Reboot(ctx, name, 0))
					// The replica's cache may not have seen the other replica's grant yet.
					require.Eventually(t, func() bool {
						released, err := replicas[round%2].SteadyState(ctx, f.params(name, "default"))
						require.NoError(t, err)
						return released
					}, 10*time.Second, 10*time.Millisecond)
				}
				for _, l := range replicas {
					awaitNoHolders(t, l, "default")
				}
			}
			assert.LessOrEqual(t, watcher.max(), slots, "at some moment more nodes held than slots")
			assert.Positive(t, watcher.max())
			t.Logf("slots=%d: %d rounds of %d nodes x 2 replicas x 2 requests, %d grants, most holding at once: %d",
				slots, rounds, nodes, totalGranted, watcher.max())
		})
	}
}

// The interleaving that breaks the naive scheme ("annotate, re-list, an earlier name
// wins"): the later name checks first and sees nobody; the earlier name then claims,
// checks and sees only the later claim. Both would reboot. Here the earlier name must
// wait, and once the later one holds, be refused.
func TestLaterClaimantCheckingFirst(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	f := newFleet(t, env, "interleave", 2, simkubelet.NodeOptions{})
	early, late := f.names[0], f.names[1]
	watcher := watchHolders(t, env.Client, f)
	lateChecked, earlyDone := make(chan struct{}), make(chan struct{})
	var once sync.Once
	testHookAfterCheck = func(node string) {
		if node != late {
			return
		}
		once.Do(func() {
			close(lateChecked)
			select { // hold the later request between its check and its promotion
			case <-earlyDone:
			case <-time.After(time.Second):
			}
		})
	}
	t.Cleanup(func() { testHookAfterCheck = nil })
	l := startLock(t, env.Client, Options{Wait: 500 * time.Millisecond})
	awaitCached(t, l, f)

	lateErr := make(chan error, 1)
	go func() { lateErr <- l.PreReboot(ctx, f.params(late, "default")) }()
	<-lateChecked
	earlyErr := l.PreReboot(ctx, f.params(early, "default"))
	close(earlyDone)
	require.NoError(t, <-lateErr, "the later name checked first and saw nobody: it wins")
	var held *HeldError
	require.ErrorAs(t, earlyErr, &held, "the earlier name must not reboot beside the later one")
	assert.Equal(t, []string{late}, held.Holders)
	assert.Equal(t, 1, watcher.max())
}

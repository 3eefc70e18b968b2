package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// testPolicy is a Policy with fixed answers: slots slots per group (1 if 0), every
// candidate admitted.
type testPolicy struct {
	slots      int
	staleAfter time.Duration
}

func (p testPolicy) Slots(string) int                { return max(p.slots, 1) }
func (testPolicy) Groups() []string                  { return []string{"default"} }
func (testPolicy) Admit(Candidate) error             { return nil }
func (p testPolicy) StaleHolderAfter() time.Duration { return p.staleAfter }

// fleet is a set of test nodes, named prefix-00, prefix-01, ...
type fleet struct {
	names []string
	ids   map[string]string // node name → Zincati ID
}

func newFleet(t *testing.T, env *controlplane.Env, prefix string, n int, opts simkubelet.NodeOptions) fleet {
	t.Helper()
	f := fleet{ids: map[string]string{}}
	for i := range n {
		name := fmt.Sprintf("%s-%02d", prefix, i)
		o := opts
		o.MachineID = simkubelet.RandomID()
		_, err := env.Kubelet.AddNode(context.Background(), name, o)
		require.NoError(t, err)
		id, err := fleetlock.ZincatiID(o.MachineID)
		require.NoError(t, err)
		f.names = append(f.names, name)
		f.ids[name] = id
	}
	t.Cleanup(func() {
		for _, name := range f.names {
			_ = env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	})
	return f
}

func (f fleet) params(name, group string) fleetlock.ClientParams {
	return fleetlock.ClientParams{ID: f.ids[name], Group: group}
}

func startLock(t *testing.T, client kubernetes.Interface, opts Options) *Lock {
	t.Helper()
	l, err := New(client, &locktest.Drained{}, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	require.NoError(t, l.Start(ctx))
	return l
}

// awaitCached waits until l's cache shows every node of f, so IDs resolve.
func awaitCached(t *testing.T, l *Lock, f fleet) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, name := range f.names {
			if _, err := l.resolve(f.ids[name]); err != nil {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)
}

// awaitNoHolders waits until l's cache shows no claim or hold in group.
func awaitNoHolders(t *testing.T, l *Lock, group string) {
	t.Helper()
	require.Eventually(t, func() bool {
		objs, err := l.nodes.GetIndexer().ByIndex(byGroup, group)
		return err == nil && len(objs) == 0
	}, 10*time.Second, 10*time.Millisecond)
}

func nodeLockState(t *testing.T, client kubernetes.Interface, name string) (nodeLock, bool) {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	return lockOf(n), n.Spec.Unschedulable
}

// holdersWatcher follows every lock change through a watch, in the order the API server
// applied them, and records the most nodes of a group that held at once.
type holdersWatcher struct {
	mu      sync.Mutex
	holding map[string]bool
	most    int
}

func watchHolders(t *testing.T, client kubernetes.Interface, f fleet) *holdersWatcher {
	t.Helper()
	ours := map[string]bool{}
	for _, n := range f.names {
		ours[n] = true
	}
	w, err := client.CoreV1().Nodes().Watch(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	h := &holdersWatcher{holding: map[string]bool{}}
	go func() {
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || !ours[n.Name] {
				continue
			}
			h.mu.Lock()
			h.holding[n.Name] = ev.Type != watch.Deleted && lockOf(n).holding()
			count := 0
			for _, held := range h.holding {
				if held {
					count++
				}
			}
			h.most = max(h.most, count)
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *holdersWatcher) max() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.most
}

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
			opts := Options{Policy: testPolicy{slots: slots}, Wait: 300 * time.Millisecond}
			replicas := []*Lock{startLock(t, env.Client, opts), startLock(t, env.Client, opts)}
			for _, l := range replicas {
				awaitCached(t, l, f)
			}
			ctx := context.Background()
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
	ctx := context.Background()
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

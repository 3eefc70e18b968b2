package lock

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// testPolicy is a Policy with fixed answers: the given slots per group (1 if 0), every
// candidate admitted.
type testPolicy struct {
	slots      int
	staleAfter time.Duration
}

func (p testPolicy) Slots(string) int                { return max(p.slots, 1) }
func (testPolicy) Groups() []string                  { return []string{"default"} }
func (testPolicy) Admit(Candidate) error             { return nil }
func (p testPolicy) StaleHolderAfter() time.Duration { return p.staleAfter }
func (testPolicy) After(string) []string             { return nil }

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
		_, err := env.Kubelet.AddNode(t.Context(), name, o)
		require.NoError(t, err)
		id, err := fleetlock.ZincatiID(o.MachineID)
		require.NoError(t, err)
		f.names = append(f.names, name)
		f.ids[name] = id
	}
	t.Cleanup(func() {
		for _, name := range f.names {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
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
	ctx, cancel := context.WithCancel(t.Context())
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
	n, err := client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
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

// watchFleet calls seen, on a goroutine, with every watch event about f's nodes, in
// the order the API server applied them, until the test ends.
func watchFleet(t *testing.T, client kubernetes.Interface, f fleet, seen func(watch.EventType, *corev1.Node)) {
	t.Helper()
	ours := map[string]bool{}
	for _, n := range f.names {
		ours[n] = true
	}
	w, err := client.CoreV1().Nodes().Watch(t.Context(), metav1.ListOptions{})
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	go func() {
		for ev := range w.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok && ours[n.Name] {
				seen(ev.Type, n)
			}
		}
	}()
}

func watchHolders(t *testing.T, client kubernetes.Interface, f fleet) *holdersWatcher {
	t.Helper()
	h := &holdersWatcher{holding: map[string]bool{}}
	watchFleet(t, client, f, func(typ watch.EventType, n *corev1.Node) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.holding[n.Name] = typ != watch.Deleted && lockOf(n).holding()
		count := 0
		for _, held := range h.holding {
			if held {
				count++
			}
		}
		h.most = max(h.most, count)
	})
	return h
}

func (h *holdersWatcher) max() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.most
}

func awaitState(t *testing.T, l *Lock, name string, want State) {
	t.Helper()
	require.Eventually(t, func() bool {
		obj, ok, err := l.nodes.GetIndexer().GetByKey(name)
		return err == nil && ok && lockOf(obj.(*corev1.Node)).State == want
	}, 10*time.Second, 10*time.Millisecond)
}

// resourceRequests is the counter's snapshot without the API server health probes
// (GET /readyz every few seconds, whatever the requests).
func resourceRequests(c *controlplane.RequestCounter) map[string]int {
	m := c.Snapshot()
	delete(m, "GET /readyz")
	return m
}

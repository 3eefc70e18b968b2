package fleetlock_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// TestDuplicateRequestsShareWork is issue 20's item 4: 50 concurrent pre-reboot
// requests for the same node, waiting while another node holds the group's only
// slot, when that slot frees. All 50 get one answer (the grant), and the API
// requests the lock makes for them are about those of one request, not 50 times
// as many (the old handler: thousands, and most answered api_unavailable).
func TestDuplicateRequestsShareWork(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	prefix := fmt.Sprintf("dup%d", time.Now().UnixNano()%1e9)
	ids := map[string]string{}
	for _, name := range []string{prefix + "-a", prefix + "-b"} {
		mid := simkubelet.RandomID()
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: mid})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
		ids[name], err = fleetlock.ZincatiID(mid)
		require.NoError(t, err)
	}
	cfg, counter := env.CountingConfig()
	lk, err := lock.New(kubernetes.NewForConfigOrDie(cfg), &locktest.Drained{}, lock.Options{Wait: 20 * time.Second})
	require.NoError(t, err)
	lctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	require.NoError(t, lk.Start(lctx))
	require.Eventually(t, func() bool {
		_, errA := lk.Resolve(ids[prefix+"-a"])
		_, errB := lk.Resolve(ids[prefix+"-b"])
		return errA == nil && errB == nil
	}, 30*time.Second, 20*time.Millisecond)
	srv := httptest.NewServer(fleetlock.NewHandler(lk, fleetlock.Options{}))
	t.Cleanup(srv.Close)
	client := &fleetlock.Client{BaseURL: srv.URL + "/"}
	group := prefix
	a := fleetlock.ClientParams{ID: ids[prefix+"-a"], Group: group}
	b := fleetlock.ClientParams{ID: ids[prefix+"-b"], Group: group}

	resp, err := client.PreReboot(ctx, a)
	require.NoError(t, err)
	require.True(t, resp.OK(), "%+v", resp.Reply)

	// waitForSlot sends n concurrent pre-reboots for waiter while holder holds the
	// only slot, releases holder, and returns the replies' kinds and the API
	// requests made meanwhile (the lock's, the release's one patch included).
	waitForSlot := func(n int, waiter, holder fleetlock.ClientParams) (map[fleetlock.Kind]int, map[string]int, int) {
		before := counter.Snapshot()
		replies := make([]fleetlock.Response, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				r, err := client.PreReboot(ctx, waiter)
				assert.NoError(t, err)
				replies[i] = r
			})
		}
		time.Sleep(time.Second) // every request is held: holder holds the only slot
		resp, err := client.SteadyState(ctx, holder)
		require.NoError(t, err)
		require.Equal(t, fleetlock.KindLockReleased, resp.Reply.Kind)
		wg.Wait()
		after := counter.Snapshot()
		kinds := map[fleetlock.Kind]int{}
		for _, r := range replies {
			kinds[r.Reply.Kind]++
		}
		calls, total := map[string]int{}, 0
		for k, v := range after {
			if d := v - before[k]; d > 0 && k != "GET /readyz" && k != "watch nodes" {
				calls[k] = d
				total += d
			}
		}
		return kinds, calls, total
	}

	kinds, calls, one := waitForSlot(1, b, a)
	require.Equal(t, map[fleetlock.Kind]int{fleetlock.KindLockGranted: 1}, kinds)
	t.Logf("API requests for one request and one release: %d %v", one, calls)

	const n = 50
	kinds, calls, total := waitForSlot(n, a, b)
	t.Logf("API requests for %d duplicates and one release: %d %v; replies %v", n, total, calls, kinds)
	assert.Equal(t, map[fleetlock.Kind]int{fleetlock.KindLockGranted: n}, kinds, "every duplicate gets the one answer")
	assert.LessOrEqual(t, total, one+2, "%d duplicates cost what one request does: %v", n, calls)
}

package replace_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/replace"
)

// Inputs found in review of the change for issue 16.

// The Auto Scaling API throttles the first TerminateInstanceInAutoScalingGroup; while
// it answers, the node comes back (new boot ID, Ready, its Lease renewed). A retry of
// the terminate inside the SDK, without a fresh read, terminated it.
func TestNodeReturnsDuringTerminateRetry(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := context.Background()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	r.fake.FailNext(terminate, "Throttling", "Rate exceeded", http.StatusBadRequest)
	var calls atomic.Int32
	r.fake.SetOnCall(func(action string) {
		if action == terminate && calls.Add(1) == 1 {
			assert.NoError(t, r.env.Kubelet.Reboot(ctx, node, 0))
		}
	})
	r.reconcileUntil("the terminate asked", func() bool { return calls.Load() > 0 }, r.replacer("replica"))
	r.reconcileFor(2*time.Second, r.replacer("replica"))
	assert.Equal(t, "InService", r.fake.InstanceState(id), "the node came back while the API throttled")
	assert.Equal(t, 1, r.fake.Count(terminate))
	assert.True(t, r.nodeExists(node))
}

// A replica claimed a replacement and died before calling AWS; two replicas take the
// claim up, each on its own loop. While one's terminate call is under way (the
// instance still InService), the other took the claim up too and asked again: two
// calls, two replacements counted as started.
func TestTwoReplicasResumeOneClaim(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := context.Background()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	time.Sleep(300 * time.Millisecond)
	r.claimAsDeadReplica(node, id)
	r.launch = func(string, string) {} // no new node: the claim stays Replacing
	// The first terminate call takes 200ms (under the rig's ResumeAfter), or until a
	// second call arrives.
	second := make(chan struct{})
	var calls atomic.Int32
	r.fake.SetOnCall(func(action string) {
		if action != terminate {
			return
		}
		switch calls.Add(1) {
		case 1:
			select {
			case <-second:
			case <-time.After(200 * time.Millisecond):
			}
		case 2:
			close(second)
		}
	})
	loopCtx, stop := context.WithTimeout(ctx, 3*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for _, rep := range []*replace.Replacer{r.replacer("replica-1"), r.replacer("replica-2")} {
		wg.Go(func() {
			for loopCtx.Err() == nil {
				_ = rep.Reconcile(ctx)
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	assert.Equal(t, "Terminating", r.fake.InstanceState(id))
	assert.Equal(t, int32(1), calls.Load(), "one replica asks")
}

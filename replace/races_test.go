package replace_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
)

// Inputs found in review of the change for issue 16.

// The Auto Scaling API throttles the first TerminateInstanceInAutoScalingGroup; while
// it answers, the node comes back (new boot ID, Ready, its Lease renewed). A retry of
// the terminate inside the SDK, without a fresh read, terminated it.
func TestNodeReturnsDuringTerminateRetry(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
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

// A replica claimed a replacement and died before calling AWS; then the API server
// was down, and the node came back during the outage: its kubelet posts its new boot
// ID and renews its Lease only some seconds after the API server answers again. A
// replica resumed the claim at once on recovery, on the Lease as it was before the
// outage, and terminated the instance.
func TestOutageBeforeResumedClaim(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	time.Sleep(300 * time.Millisecond)
	r.claimAsDeadReplica(node, id)

	down := &outage{}
	down.on.Store(true)
	cfg := rest.CopyConfig(r.env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { down.rt = rt; return down }
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	// A claim is taken up at the second look: only the outage may hold it back.
	rep := replace.New(replace.Options{Cloud: r.cloud, Client: client, Namespace: r.ns, Identity: "replica",
		Config: func() *policy.Config { return r.config }, APIGrace: 500 * time.Millisecond, ResumeAfter: time.Nanosecond})
	r.reconcileFor(time.Second, rep) // the API server is down
	down.on.Store(false)
	// Back, within the grace (500ms in the rig): the kubelet has not posted yet.
	r.reconcileFor(200*time.Millisecond, rep)
	assert.Zero(t, r.fake.Count(terminate), "resumed on the Lease read before the outage")
	require.NoError(t, r.env.Kubelet.Reboot(ctx, node, 0)) // the kubelet posts
	r.reconcileFor(time.Second, rep)
	assert.Zero(t, r.fake.Count(terminate))
	assert.Equal(t, "InService", r.fake.InstanceState(id))
}

// The node rebooted and came back under another name (a hostname from DHCP): a new
// Node, the same provider ID. The old Node stays, silent, with the boot ID of the 2xx;
// its instance is up and serves as the new Node. It was terminated.
func TestInstanceBackUnderAnotherName(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	_, err := r.env.Kubelet.AddNode(ctx, node+"-renamed", simkubelet.NodeOptions{
		MachineID: simkubelet.RandomID(), ProviderID: "aws:///eu-west-1a/" + id, LeasePeriod: leasePeriod})
	require.NoError(t, err)
	r.reconcileFor(3*time.Second, r.replacer("replica"))
	assert.Zero(t, r.fake.Count(terminate), "its instance is the Node %s-renamed", node)
	assert.Equal(t, "InService", r.fake.InstanceState(id))
}

// A replica claimed a replacement and died before calling AWS; two replicas take the
// claim up, each on its own loop. While one's terminate call is under way (the
// instance still InService), the other took the claim up too and asked again: two
// calls, two replacements counted as started.
func TestTwoReplicasResumeOneClaim(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
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

// An operator (or a bug) edits a record's instance to another instance of the group,
// in service, with no Node (say, a bastion): the record's provider ID still names the
// failed node's instance. The instance of the record was terminated, not the node's.
func TestEditedRecordInstanceNotTerminated(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	bastion := randomInstance()
	r.fake.AddInstance(asg, bastion, "eu-west-1a")
	require.NoError(t, r.grant(node))
	cm, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, "replace-"+node, metav1.GetOptions{})
	require.NoError(t, err)
	edited := strings.Replace(cm.Data["record"], `"id": "`+id+`"`, `"id": "`+bastion+`"`, 1)
	require.NotEqual(t, cm.Data["record"], edited)
	cm.Data["record"] = edited
	_, err = r.env.Client.CoreV1().ConfigMaps(r.ns).Update(ctx, cm, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	r.reconcileFor(3*time.Second, r.replacer("replica"))
	assert.Zero(t, r.fake.Count(terminate))
	assert.Equal(t, "InService", r.fake.InstanceState(bastion))
}

// A replica claimed a replacement an hour ago and died before calling AWS (the
// replicas were down since, or the cloud kept saying "not now"). Its successor
// terminates the instance; the new instance's node takes a second to be Ready. The
// replacement's timeout counted from the claim: Failed at once, its place in flight
// given back while the group was still launching.
func TestLateClaimWaitsForNewNode(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	time.Sleep(300 * time.Millisecond)
	r.claimAsDeadReplica(node, id)
	cm, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, "replace-"+node, metav1.GetOptions{})
	require.NoError(t, err)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(cm.Data["record"]), &rec))
	rec["terminatedAt"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	b, err := json.Marshal(rec)
	require.NoError(t, err)
	cm.Data["record"] = string(b)
	_, err = r.env.Client.CoreV1().ConfigMaps(r.ns).Update(ctx, cm, metav1.UpdateOptions{})
	require.NoError(t, err)
	r.launch = func(group, name string) {
		go func() {
			time.Sleep(time.Second)
			r.addNode(name, group)
		}()
	}
	rep := r.replacer("replica")
	r.reconcileUntil("terminated", func() bool { return r.fake.InstanceState(id) == "Terminating" }, rep)
	r.reconcileUntil("the record done", func() bool {
		rec := r.record(node)
		return rec == nil || rec["state"] == replace.StateFailed
	}, rep)
	assert.Nil(t, r.record(node), "replaced, not failed")
	assert.Zero(t, results(t, "failed", rep))
}

// A replica whose clock is an hour behind asked to terminate the instance (its
// terminatedAt reads an hour ago on this replica's clock); the new instance's node
// takes a second to be Ready. The timeout compared another replica's timestamp with
// this one's clock: Failed at once, its place in flight given back while the group
// was still launching.
func TestTimeoutOnThisReplicasClock(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	time.Sleep(300 * time.Millisecond)
	r.claimAsDeadReplica(node, id)
	cm, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, "replace-"+node, metav1.GetOptions{})
	require.NoError(t, err)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(cm.Data["record"]), &rec))
	rec["terminatedAt"], rec["attempts"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano), 1
	b, err := json.Marshal(rec)
	require.NoError(t, err)
	cm.Data["record"] = string(b)
	_, err = r.env.Client.CoreV1().ConfigMaps(r.ns).Update(ctx, cm, metav1.UpdateOptions{})
	require.NoError(t, err)
	joined := make(chan struct{})
	r.launch = func(group, name string) {
		go func() {
			defer close(joined)
			time.Sleep(time.Second)
			r.addNode(name, group)
		}()
	}
	require.NoError(t, r.cloud.Replace(ctx, replace.Instance{ID: id, Group: asg})) // that replica's call
	rep := r.replacer("replica")
	r.reconcileUntil("the record done", func() bool {
		rec := r.record(node)
		return rec == nil || rec["state"] == replace.StateFailed
	}, rep)
	<-joined
	assert.Nil(t, r.record(node), "replaced, not failed")
	assert.Zero(t, results(t, "failed", rep))
	assert.Equal(t, 1, r.fake.Count(terminate))
}

// Two nodes of one Auto Scaling group never return. The first one's instance is
// terminated and its group still launching when the in-flight Lease is deleted (an
// operator clearing the namespace's Leases to reset leader election). The second
// one's instance was terminated too: the limit lived only in that Lease.
func TestInFlightLeaseDeleted(t *testing.T) {
	r := newRig(t, time.Second, "replacement: {maxInFlight: 2}")
	ctx := t.Context()
	a, b := r.prefix+"-a", r.prefix+"-b"
	r.addNode(a, asg)
	idB := r.addNode(b, asg)
	r.slots.Store(2)
	r.launch = func(string, string) {} // no new node joins: the first replacement stays in flight
	require.NoError(t, r.grant(a))
	require.NoError(t, r.env.Kubelet.Fail(ctx, a))
	rep := r.replacer("replica")
	r.reconcileUntil("a terminated", func() bool { return r.fake.Count(terminate) == 1 }, rep)
	require.NoError(t, r.env.Client.CoordinationV1().Leases(r.ns).Delete(ctx, replace.LeaseInFlight, metav1.DeleteOptions{}))
	require.NoError(t, r.grant(b))
	require.NoError(t, r.env.Kubelet.Fail(ctx, b))
	r.reconcileFor(3*time.Second, rep)
	assert.Equal(t, 1, r.fake.Count(terminate), "one replacement per group at once")
	assert.Equal(t, "InService", r.fake.InstanceState(idB))
}

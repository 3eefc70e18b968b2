package replace_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/fakeasg"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
)

// The failing inputs of issue 16: each terminated a healthy instance, or deleted a
// healthy Node, before the replacer judged a node by evidence about this reboot.

const terminate = "TerminateInstanceInAutoScalingGroup"

// setReady writes the node's Ready condition as its kubelet would, with a fresh
// heartbeat: the kubelet is alive (its Lease keeps being renewed). transition is the
// lastTransitionTime written (another clock's).
func (r *rig) setReady(node string, status corev1.ConditionStatus, transition time.Time) {
	r.t.Helper()
	ctx := context.Background()
	require.Eventually(r.t, func() bool {
		n, err := r.env.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for i := range n.Status.Conditions {
			if c := &n.Status.Conditions[i]; c.Type == corev1.NodeReady {
				c.Status, c.Reason = status, "NetworkPluginNotReady"
				c.LastHeartbeatTime, c.LastTransitionTime = metav1.Now(), metav1.NewTime(transition)
			}
		}
		_, err = r.env.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
}

// reconcileFor runs the replicas' Reconcile, back to back, for d.
func (r *rig) reconcileFor(d time.Duration, reps ...*replace.Replacer) {
	r.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var wg sync.WaitGroup
		for _, rep := range reps {
			wg.Go(func() { _ = rep.Reconcile(context.Background()) })
		}
		wg.Wait()
	}
}

// A CNI restart: Ready=False with a fresh heartbeat from 1s into a 3s drain, with
// replaceAfter 2s. The kubelet is alive: never replaced (it was terminated 10 ms after
// the 2xx, the drain counted as downtime).
func TestCNIRestartNotReplaced(t *testing.T) {
	r := newRig(t, 2*time.Second, "")
	node := r.prefix + "-a"
	r.addNode(node, asg)
	rep := r.replacer("replica")
	require.NoError(t, r.promote(node))
	time.Sleep(time.Second)
	r.setReady(node, corev1.ConditionFalse, time.Now())
	time.Sleep(2 * time.Second)
	r.tell(node)
	r.reconcileFor(3*time.Second, rep)
	assert.Zero(t, r.fake.Count(terminate), "a node whose kubelet heartbeats is up")
	assert.Equal(t, replace.StateGranted, r.record(node)["state"])
}

// Ready at the 2xx, then a NotReady whose transition time is 30s behind this
// replica's clock, from a kubelet that is alive: never replaced (it was terminated
// 15 ms after the 2xx).
func TestNotReadyFromAnotherClockNotReplaced(t *testing.T) {
	r := newRig(t, time.Second, "")
	node := r.prefix + "-a"
	r.addNode(node, asg)
	rep := r.replacer("replica")
	require.NoError(t, r.grant(node))
	r.setReady(node, corev1.ConditionFalse, time.Now().Add(-30*time.Second))
	r.reconcileFor(3*time.Second, rep)
	assert.Zero(t, r.fake.Count(terminate))
}

// A reboot of 300ms that starts at .850 of a second: its NotReady is stored as .000
// (seconds), so it looked 850ms older. With replaceAfter 1s it was terminated 150ms
// into the reboot; the node came back and its instance was gone.
func TestTruncatedTransitionNotReplaced(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	r.addNode(node, asg)
	rep := r.replacer("replica")
	require.NoError(t, r.grant(node))
	// The next .850 at least a whole second after the 2xx.
	start := time.Now().Truncate(time.Second).Add(time.Second + 850*time.Millisecond)
	var rebooted atomic.Bool
	go func() {
		time.Sleep(time.Until(start))
		assert.NoError(t, r.env.Kubelet.Reboot(ctx, node, 300*time.Millisecond))
		rebooted.Store(true)
	}()
	r.reconcileFor(time.Until(start)+3*time.Second, rep)
	require.True(t, rebooted.Load())
	assert.Zero(t, r.fake.Count(terminate), "the node came back in 300ms")
}

// outage is a transport that fails every request while on, as an API server that is
// down does.
type outage struct {
	rt http.RoundTripper
	on atomic.Bool
}

func (o *outage) RoundTrip(req *http.Request) (*http.Response, error) {
	if o.on.Load() {
		return nil, errors.New("connection refused (simulated API server outage)")
	}
	return o.rt.RoundTrip(req)
}

// An API server outage longer than replaceAfter, during which the node rebooted and
// came back: on recovery its NotReady from before the outage is the newest the API
// server has until the kubelet posts again (within seconds). The replacer acted on it
// at once; it must wait.
func TestAPIServerOutageNotReplaced(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	r.addNode(node, asg)
	down := &outage{}
	cfg := rest.CopyConfig(r.env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { down.rt = rt; return down }
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	rep := r.replacerWith("replica", client)
	require.NoError(t, r.grant(node))
	r.reconcileFor(200*time.Millisecond, rep)

	// The node reboots; the API server goes down with it and stays down 3s; the node
	// is up again before the API server is, and its kubelet posts 500ms after.
	rebooted := make(chan error, 1)
	go func() { rebooted <- r.env.Kubelet.Reboot(ctx, node, 3500*time.Millisecond) }()
	time.Sleep(100 * time.Millisecond)
	down.on.Store(true)
	r.reconcileFor(3*time.Second, rep)
	down.on.Store(false)
	r.reconcileFor(2*time.Second, rep)
	require.NoError(t, <-rebooted)
	assert.Zero(t, r.fake.Count(terminate), "the node came back; the outage hid it")
}

// claimAsDeadReplica writes node's record as a replica writes its claim of the
// replacement, just before calling AWS, and then dies.
func (r *rig) claimAsDeadReplica(node string, instance string) {
	r.t.Helper()
	ctx := context.Background()
	cm, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, "replace-"+node, metav1.GetOptions{})
	require.NoError(r.t, err)
	rec := r.record(node)
	rec["state"], rec["terminatedAt"], rec["by"] = replace.StateReplacing, time.Now().UTC().Format(time.RFC3339Nano), "dead-replica"
	rec["before"] = []string{instance}
	lease, err := r.env.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
	require.NoError(r.t, err)
	rec["leaseRenewTime"] = lease.Spec.RenewTime // the Lease as it was when judged silent
	b, err := json.Marshal(rec)
	require.NoError(r.t, err)
	cm.Data["record"] = string(b)
	_, err = r.env.Client.CoreV1().ConfigMaps(r.ns).Update(ctx, cm, metav1.UpdateOptions{})
	require.NoError(r.t, err)
}

// A replica claims a replacement (record Replacing) and dies before calling AWS; the
// node finishes its slow reboot, is released and uncordoned. The next replica
// terminated its instance, which is InService, and deleted its Node.
func TestClaimedReplacementOfNodeThatCameBack(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	time.Sleep(300 * time.Millisecond) // the Lease as the dead replica saw it: silent
	r.claimAsDeadReplica(node, id)
	require.NoError(t, r.env.Kubelet.Reboot(ctx, node, 0)) // back, new boot ID
	released, err := r.lock.SteadyState(ctx, fleetlock.ClientParams{ID: r.ids[node], Group: "default"})
	require.NoError(t, err)
	require.True(t, released)

	r.reconcileFor(2*time.Second, r.replacer("next"))
	assert.Zero(t, r.fake.Count(terminate), "the node came back and was released")
	assert.Equal(t, "InService", r.fake.InstanceState(id))
	assert.True(t, r.nodeExists(node))
}

// A node that posts Ready with a new boot ID while the replacer asks the Auto
// Scaling API (Preflight, InService) was terminated anyway.
func TestNodeReturnsDuringCloudCalls(t *testing.T) {
	// Preflight and InService each describe the group: the node comes back during the
	// first call, or the second.
	for _, during := range []int32{1, 2} {
		t.Run(fmt.Sprintf("call-%d", during), func(t *testing.T) {
			r := newRig(t, time.Second, "")
			ctx := t.Context()
			node := r.prefix + "-a"
			id := r.addNode(node, asg)
			require.NoError(t, r.grant(node))
			require.NoError(t, r.env.Kubelet.Fail(ctx, node))
			var calls atomic.Int32
			r.fake.SetOnCall(func(action string) {
				if action == "DescribeAutoScalingGroups" && calls.Add(1) == during {
					assert.NoError(t, r.env.Kubelet.Reboot(ctx, node, 0))
				}
			})
			r.reconcileFor(4*time.Second, r.replacer("replica"))
			assert.Zero(t, r.fake.Count(terminate), "back during describe call %d", during)
			assert.Equal(t, "InService", r.fake.InstanceState(id))
			assert.True(t, r.nodeExists(node))
		})
	}
}

// The new instance registers a Node with the old name (EC2 IP-based names come
// back): the old Node was deleted by name, so the new, healthy Node was, and its
// instance stayed InService with no Node.
func TestNewNodeWithTheOldName(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	r.addNode(node, asg)
	var newUID string
	r.launch = func(group, _ string) {
		// The cloud's node controller deletes the old Node with its instance; the new
		// instance's kubelet registers under the same name.
		assert.NoError(t, r.env.Client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{}))
		id := randomInstance()
		r.fake.AddInstance(group, id, "eu-west-1a")
		n, err := r.env.Kubelet.AddNode(ctx, node, simkubelet.NodeOptions{
			MachineID: simkubelet.RandomID(), ProviderID: "aws:///eu-west-1a/" + id, LeasePeriod: leasePeriod})
		if assert.NoError(t, err) {
			r.mu.Lock()
			newUID = string(n.UID)
			r.mu.Unlock()
		}
	}
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	r.reconcileUntil("the failed node replaced", func() bool { return r.record(node) == nil }, r.replacer("replica"))
	assert.Equal(t, 1, r.fake.Count(terminate))
	n, err := r.env.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	require.NoError(t, err, "the new instance's Node stays")
	r.mu.Lock()
	assert.Equal(t, newUID, string(n.UID))
	r.mu.Unlock()
}

// Two replicas reconcile at once with maxInFlight 1 (the shipped manifest runs two):
// each counted the replacements in flight from its own list, and two instances of one
// Auto Scaling group were terminated.
func TestTwoReplicasMaxInFlight(t *testing.T) {
	// One Auto Scaling group (one replacement per group, always), or two (the global
	// maxInFlight).
	for _, groups := range []int{1, 2} {
		t.Run(fmt.Sprintf("groups-%d", groups), func(t *testing.T) {
			r := newRig(t, time.Second, "replacement: {maxInFlight: 1}")
			ctx := t.Context()
			a, b := r.prefix+"-a", r.prefix+"-b"
			r.addNode(a, asg)
			other := asg
			if groups == 2 {
				other = "asg-other"
				r.fake.AddGroup(&fakeasg.Group{Name: other, Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: 1})
			}
			r.addNode(b, other)
			r.slots.Store(2)
			r.launch = func(string, string) {} // no new node joins: the first replacement stays in flight
			for _, n := range []string{a, b} {
				require.NoError(t, r.grant(n))
				require.NoError(t, r.env.Kubelet.Fail(ctx, n))
			}
			// Both replicas ask the Auto Scaling API before either claims: the first two
			// DescribeAutoScalingGroups calls wait for each other.
			var arrived sync.WaitGroup
			arrived.Add(2)
			var calls atomic.Int32
			r.fake.SetOnCall(func(action string) {
				if action == "DescribeAutoScalingGroups" && calls.Add(1) <= 2 {
					arrived.Done()
					done := make(chan struct{})
					go func() { arrived.Wait(); close(done) }()
					select {
					case <-done:
					case <-time.After(5 * time.Second):
					}
				}
			})
			r.reconcileFor(3*time.Second, r.replacer("replica-1"), r.replacer("replica-2"))
			assert.Equal(t, 1, r.fake.Count(terminate), "maxInFlight 1")
		})
	}
}

// A new grant of a node whose replacement failed keeps the Failed record: the
// breaker keeps its count (the record was overwritten by the new grant's).
func TestNewGrantKeepsFailedRecord(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	r.addNode(node, asg)
	rep := r.replacer("replica")
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	r.fake.FailNext(terminate, "ValidationError", "instance is protected", http.StatusBadRequest)
	r.reconcileUntil("the replacement failed", func() bool { return r.record(node)["state"] == replace.StateFailed }, rep)
	r.release(node)
	require.NoError(t, r.env.Kubelet.Reboot(ctx, node, 0)) // an operator brought it back
	require.NoError(t, r.grant(node))
	assert.Equal(t, replace.StateFailed, r.record(node)["state"])
	assert.Contains(t, r.record(node)["error"], "instance is protected")
	recs, err := replace.ListRecords(ctx, r.env.Client, r.ns)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, node, recs[0].Node)
	assert.Equal(t, replace.StateFailed, recs[0].State)
	assert.Equal(t, "default", recs[0].Group)
	assert.Contains(t, recs[0].Why, "instance is protected")
	assert.Equal(t, asg, recs[0].Instance.Group)
}

// replaceAfter under the safe minimum is refused, but in a dry run.
func TestReplaceAfterMinimum(t *testing.T) {
	_, err := policy.Parse([]byte("groups: {w: {replaceAfter: 90s}}"))
	require.ErrorContains(t, err, "groups.w.replaceAfter: 1m30s is under 2m0s")
	_, err = policy.Parse([]byte("defaults: {replaceAfter: 5s}"))
	require.ErrorContains(t, err, "defaults.replaceAfter: 5s is under")
	_, err = policy.Parse([]byte("defaults: {replaceAfter: 5s}\nreplacement: {dryRun: true}"))
	require.NoError(t, err)
	_, err = policy.Parse([]byte("defaults: {replaceAfter: 2m}"))
	require.NoError(t, err)
}

// A record an earlier version wrote (the promotion as grantedAt, no Node UID, no 2xx)
// never justifies a replacement: it is dropped.
func TestEarlierRecordDropped(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.promote(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	_, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "replace-" + node, Labels: map[string]string{replace.LabelRecord: "true"}},
		Data: map[string]string{"record": `{"node": "` + node + `", "group": "default", "providerID": "aws:///eu-west-1a/` + id +
			`", "instance": {"id": "` + id + `", "group": "` + asg + `"}, "grantedAt": "2026-01-01T00:00:00Z", "state": "Granted"}`},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	r.reconcileUntil("dropped", func() bool { return r.record(node) == nil }, r.replacer("replica"))
	assert.Zero(t, r.fake.Count(terminate))
}

package replace_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fakeasg"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
	rmaws "github.com/reboot-manager/reboot-manager/replace/aws"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// slotsPolicy is the lock's policy in these tests: no restriction but the slots, which
// a test may change.
type slotsPolicy struct {
	lock.NoPolicy
	n *atomic.Int32
}

func (p slotsPolicy) Slots(string) int { return int(p.n.Load()) }

const asg = "asg-workers"

// rig: a lock whose grants are recorded by a Replacer, nodes that are instances of a
// fake Auto Scaling group reached through the real SDK, and a launch of a new node
// when the group terminates one.
type rig struct {
	t        *testing.T
	env      *controlplane.Env
	ns       string
	fake     *fakeasg.Fake
	cloud    *rmaws.Cloud
	config   *policy.Config
	lock     *lock.Lock
	recorder events.EventRecorder
	prefix   string

	first *replace.Replacer // the replica that answers pre-reboot
	slots atomic.Int32      // of the lock's group

	mu       sync.Mutex
	ids      map[string]string // node → Zincati ID
	launched []string          // nodes launched as replacements
	// launch, if set, joins the node of an instance the group launched (default: a
	// new Node of that name).
	launch func(group, name string)
}

func newRig(t *testing.T, replaceAfter time.Duration, config string) *rig {
	t.Helper()
	env := controlplane.Shared(t)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	r := &rig{t: t, env: env, ns: env.Namespace(t), fake: fakeasg.New(), ids: map[string]string{},
		prefix: strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + simkubelet.RandomID()[:5]}
	t.Cleanup(r.fake.Close)
	r.fake.AddGroup(&fakeasg.Group{Name: asg, Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: 3})
	r.fake.OnTerminate = func(group, _ string) {
		// The group keeps its capacity: it launches a new instance, which joins the cluster.
		r.mu.Lock()
		name := fmt.Sprintf("%s-new-%d", r.prefix, len(r.launched))
		r.launched = append(r.launched, name)
		launch := r.launch
		r.mu.Unlock()
		if launch != nil {
			launch(group, name)
			return
		}
		r.addNode(name, group)
	}
	client := autoscaling.NewFromConfig(aws.Config{
		Region: "eu-west-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""), RetryMaxAttempts: 1,
	}, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(r.fake.URL()) })
	r.cloud = rmaws.New(client, rmaws.Options{Backoff: time.Millisecond})
	var err error
	r.config, err = policy.Parse([]byte(config))
	require.NoError(t, err)
	// Set after validation: the tests' reboots last milliseconds, not minutes.
	r.config.Defaults.ReplaceAfter.Duration = replaceAfter
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: env.Client.EventsV1()})
	require.NoError(t, broadcaster.StartRecordingToSinkWithContext(ctx))
	t.Cleanup(broadcaster.Shutdown)
	r.recorder = broadcaster.NewRecorder(scheme.Scheme, "reboot-manager")
	r.first = r.replacer("first")
	r.slots.Store(1)
	r.lock, err = lock.New(env.Client, &locktest.Drained{}, lock.Options{Policy: slotsPolicy{n: &r.slots}, Wait: time.Second})
	require.NoError(t, err)
	require.NoError(t, r.lock.Start(ctx))
	return r
}

// replacer returns a Replacer, as one replica would run it.
func (r *rig) replacer(identity string) *replace.Replacer {
	return r.replacerWith(identity, r.env.Client)
}

// replacerWith returns a Replacer that reaches the API server through client.
func (r *rig) replacerWith(identity string, client kubernetes.Interface) *replace.Replacer {
	return replace.New(replace.Options{
		Cloud: r.cloud, Client: client, Namespace: r.ns, Identity: identity,
		Config: func() *policy.Config { return r.config }, Recorder: r.recorder, APIGrace: 500 * time.Millisecond,
		ResumeAfter: 300 * time.Millisecond,
	})
}

// tell runs what the lock runs just before its 2xx to pre-reboot, with the node as
// read from the API server now.
func (r *rig) tell(node string) {
	r.t.Helper()
	n, err := r.env.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	require.NoError(r.t, err)
	h, _ := lock.HolderOf(n)
	g := lock.Grant{Node: n.Name, UID: n.UID, Group: "default", Promoted: h.Since, BootID: n.Annotations[lock.AnnotationBootID]}
	require.NoError(r.t, r.first.ToldToReboot(context.Background(), n, g, time.Now()))
}

func randomInstance() string {
	b := make([]byte, 9)
	_, _ = rand.Read(b)
	return "i-" + hex.EncodeToString(b)[:17]
}

// addNode creates a Ready node; with group, it is an instance of that Auto Scaling
// group; without, its provider ID is providerID-less... see addNodeWith.
func (r *rig) addNode(name, group string) string {
	id := randomInstance()
	if group != "" {
		r.fake.AddInstance(group, id, "eu-west-1a")
	}
	r.addNodeWith(name, "aws:///eu-west-1a/"+id)
	return id
}

// leasePeriod is how often the tests' kubelets renew their Lease: far shorter than
// replaceAfter, as 10s is far shorter than a real replaceAfter.
const leasePeriod = 100 * time.Millisecond

func (r *rig) addNodeWith(name, providerID string) {
	r.t.Helper()
	mid := simkubelet.RandomID()
	_, err := r.env.Kubelet.AddNode(context.Background(), name, simkubelet.NodeOptions{MachineID: mid, ProviderID: providerID, LeasePeriod: leasePeriod})
	require.NoError(r.t, err)
	id, err := fleetlock.ZincatiID(mid)
	require.NoError(r.t, err)
	r.mu.Lock()
	r.ids[name] = id
	r.mu.Unlock()
	r.t.Cleanup(func() { _ = r.env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// grant takes the lock for node, as Zincati's pre-reboot does, and tells it to reboot.
func (r *rig) grant(node string) error {
	r.t.Helper()
	if err := r.promote(node); err != nil {
		return err
	}
	r.tell(node)
	return nil
}

// promote takes the lock for node and drains it, short of telling it to reboot.
func (r *rig) promote(node string) error {
	r.t.Helper()
	r.mu.Lock()
	id := r.ids[node]
	r.mu.Unlock()
	var err error
	require.Eventually(r.t, func() bool {
		_, rerr := r.lock.Resolve(id)
		return rerr == nil
	}, 10*time.Second, 10*time.Millisecond)
	err = r.lock.PreReboot(context.Background(), fleetlock.ClientParams{ID: id, Group: "default"})
	return err
}

// record reads node's replacement record; nil if none.
func (r *rig) record(node string) map[string]any {
	r.t.Helper()
	cm, err := r.env.Client.CoreV1().ConfigMaps(r.ns).Get(context.Background(), "replace-"+node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	require.NoError(r.t, err)
	var rec map[string]any
	require.NoError(r.t, json.Unmarshal([]byte(cm.Data["record"]), &rec))
	return rec
}

func (r *rig) nodeExists(name string) bool {
	_, err := r.env.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	return err == nil
}

// reconcileUntil runs the replacers' Reconcile until cond holds.
func (r *rig) reconcileUntil(what string, cond func() bool, reps ...*replace.Replacer) {
	r.t.Helper()
	require.Eventually(r.t, func() bool {
		var wg sync.WaitGroup
		for _, rep := range reps {
			wg.Go(func() { _ = rep.Reconcile(context.Background()) })
		}
		wg.Wait()
		return cond()
	}, 30*time.Second, 100*time.Millisecond, what)
}

// A granted node that never comes back is replaced: its grant was recorded (instance
// and group) before it rebooted; once NotReady for replaceAfter, exactly one of two
// replicas terminates its instance (through a contention error, retried) keeping the
// capacity; the new instance's node comes up, the old Node is deleted and its slot
// frees. A node that came back is not touched.
func TestFailedNodeReplaced(t *testing.T) {
	r := newRig(t, 2*time.Second, "")
	ctx := t.Context()
	failing, healthy, next := r.prefix+"-a", r.prefix+"-b", r.prefix+"-c"
	failingID := r.addNode(failing, asg)
	r.addNode(healthy, asg)
	r.addNode(next, asg)

	require.NoError(t, r.grant(failing))
	rec := r.record(failing)
	require.NotNil(t, rec, "the grant is recorded before the reboot")
	assert.Equal(t, map[string]any{"id": failingID, "zone": "eu-west-1a", "group": asg}, rec["instance"])
	assert.Equal(t, replace.StateGranted, rec["state"])
	require.NoError(t, r.env.Kubelet.Fail(ctx, failing))

	one, two := r.replacer("replica-1"), r.replacer("replica-2")
	r.fake.FailNext("TerminateInstanceInAutoScalingGroup", "ResourceContention", "busy", http.StatusInternalServerError)
	r.reconcileUntil("the failed node replaced", func() bool { return r.record(failing) == nil }, one, two)
	assert.Equal(t, 2, r.fake.Count("TerminateInstanceInAutoScalingGroup"), "one replica terminated, once, after one contention error")
	assert.Equal(t, "Terminating", r.fake.InstanceState(failingID))
	assert.False(t, r.nodeExists(failing), "the old Node is deleted")
	require.Len(t, r.launched, 1)
	r.env.AwaitNodeEvent(t, r.launched[0], "NodeReplaced", "replaces "+failing)
	r.env.AwaitNodeEvent(t, failing, "NodeReplacing", "terminating instance "+failingID)

	// The slot is free; a node that comes back in time is left alone.
	require.Eventually(t, func() bool { return r.grant(next) == nil }, 10*time.Second, 100*time.Millisecond)
	require.NoError(t, r.env.Kubelet.Reboot(ctx, next, 100*time.Millisecond))
	time.Sleep(2 * time.Second)
	require.NoError(t, one.Reconcile(ctx))
	assert.NotNil(t, r.record(next), "Ready again: waiting for its steady-state, not replaced")
	assert.True(t, r.nodeExists(next))
	assert.Equal(t, 2, r.fake.Count("TerminateInstanceInAutoScalingGroup"))
	released, err := r.lock.SteadyState(ctx, fleetlock.ClientParams{ID: r.ids[next], Group: "default"})
	require.NoError(t, err)
	require.True(t, released)
	require.NoError(t, one.Reconcile(ctx))
	assert.Nil(t, r.record(next), "released: the record goes")

	assert.Equal(t, 1.0, results(t, "started", one, two))
	assert.Equal(t, 1.0, results(t, "replaced", one, two))
	assert.True(t, r.nodeExists(healthy))
}

// results sums rebootmanager_replacements_total{result} over replicas.
func results(t *testing.T, result string, reps ...*replace.Replacer) float64 {
	t.Helper()
	sum := 0.0
	for _, rep := range reps {
		reg := prometheus.NewRegistry()
		reg.MustRegister(rep)
		families, err := reg.Gather()
		require.NoError(t, err)
		for _, f := range families {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == result {
						sum += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return sum
}

// Nodes that are not instances of an Auto Scaling group, or not AWS instances at all,
// are never recorded nor touched; nor is a holder that is Ready but silent.
func TestNotReplaceable(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	gce, loose, silent := r.prefix+"-gce", r.prefix+"-loose", r.prefix+"-silent"
	r.addNodeWith(gce, "gce://project/europe-west1-b/"+gce)
	r.addNode(loose, "") // an EC2 instance in no group
	r.addNode(silent, asg)
	rep := r.replacer("replica")
	for _, n := range []string{gce, loose} {
		require.NoError(t, r.grant(n))
		assert.Nil(t, r.record(n), "%s: not recorded", n)
		require.NoError(t, r.env.Kubelet.Fail(ctx, n))
		r.release(n)
	}
	require.NoError(t, r.grant(silent))
	require.NotNil(t, r.record(silent))
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, rep.Reconcile(ctx))
	assert.Equal(t, replace.StateGranted, r.record(silent)["state"], "Ready: not replaced")
	assert.Zero(t, r.fake.Count("TerminateInstanceInAutoScalingGroup"))
}

// release frees node's slot by hand, as an operator would.
func (r *rig) release(node string) {
	r.t.Helper()
	require.NoError(r.t, r.lock.Release(context.Background(), node))
}

// Every guard holds a replacement back, says why once (an Event), and lets it go when
// it clears: a group that has not opted in, a suspended Launch process, a dry run.
func TestReplacementGuards(t *testing.T) {
	r := newRig(t, time.Second, "replacement: {dryRun: true}")
	ctx := t.Context()
	node := r.prefix + "-a"
	r.fake.AddGroup(&fakeasg.Group{Name: "plain", Desired: 1})
	id := r.addNode(node, "plain")
	require.NoError(t, r.grant(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))

	rep := r.replacer("replica")

	r.reconcileFor(1500*time.Millisecond, rep) // silent for replaceAfter, as this replica saw it
	r.env.AwaitNodeEvent(t, node, "ReplacementNotOptedIn", "group plain has not opted in")
	r.fake.AddGroup(&fakeasg.Group{Name: "plain", Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: 1,
		Instances: []*fakeasg.Instance{{ID: id, Zone: "eu-west-1a", State: "InService"}}, Suspended: []string{"Launch"}})
	require.NoError(t, rep.Reconcile(ctx))
	r.env.AwaitNodeEvent(t, node, "ReplacementLaunchSuspended", "Launch process suspended")
	r.fake.Suspend("plain", "Launch", true)
	require.NoError(t, rep.Reconcile(ctx))
	require.NoError(t, rep.Reconcile(ctx))
	r.env.AwaitNodeEvent(t, node, "ReplacementDryRun", "dry run: would replace instance "+id+" of plain")
	assert.Equal(t, 1.0, results(t, "dry_run", rep), "reported once")
	assert.Zero(t, r.fake.Count("TerminateInstanceInAutoScalingGroup"), "nothing terminated")
	assert.Equal(t, replace.StateGranted, r.record(node)["state"])

	r.config.Replacement.DryRun = false
	r.reconcileUntil("replaced once the dry run is off", func() bool { return r.record(node) == nil }, rep)
	assert.Equal(t, 1, r.fake.Count("TerminateInstanceInAutoScalingGroup"))
}

// After maxFailures failed replacements, nothing more is replaced: a bad release
// fails every node, and replacing the fleet would not help.
func TestCircuitBreaker(t *testing.T) {
	r := newRig(t, time.Second, "replacement: {maxFailures: 2, maxInFlight: 5}")
	ctx := t.Context()
	rep := r.replacer("replica")
	var nodes []string
	for i := range 3 {
		n := fmt.Sprintf("%s-%d", r.prefix, i)
		r.addNode(n, asg)
		nodes = append(nodes, n)
	}
	for i, n := range nodes {
		require.NoError(t, r.grant(n))
		require.NoError(t, r.env.Kubelet.Fail(ctx, n))
		if i < 2 {
			// Terminations that fail for good (not contention).
			r.fake.FailNext("TerminateInstanceInAutoScalingGroup", "ValidationError", "instance is protected", http.StatusBadRequest)
			time.Sleep(1100 * time.Millisecond)
			r.reconcileUntil("the replacement of "+n+" failed", func() bool { return r.record(n)["state"] == replace.StateFailed }, rep)
			assert.Contains(t, r.record(n)["error"], "instance is protected")
			r.env.AwaitNodeEvent(t, n, "ReplacementFailed", "instance is protected")
			r.release(n) // an operator frees the slot for the next node
		}
	}

	r.reconcileFor(1500*time.Millisecond, rep)
	r.env.AwaitNodeEvent(t, nodes[2], "ReplacementStopped", "2 replacements failed (replacement.maxFailures 2)")
	assert.Equal(t, 2, r.fake.Count("TerminateInstanceInAutoScalingGroup"), "the third is not attempted")
	assert.Equal(t, 2.0, results(t, "failed", rep))

	// An operator deletes the failed records: replacing resumes.
	for _, n := range nodes[:2] {
		require.NoError(t, r.env.Client.CoreV1().ConfigMaps(r.ns).Delete(ctx, "replace-"+n, metav1.DeleteOptions{}))
	}
	r.reconcileUntil("replaced once the breaker is reset", func() bool { return r.record(nodes[2]) == nil }, rep)
}

// A replica that stops after claiming a replacement, before or after terminating the
// instance, leaves a record another replica finishes from.
func TestRestartMidReplacement(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	claimedOnly, terminated := r.prefix+"-a", r.prefix+"-b"
	idA := r.addNode(claimedOnly, asg)
	r.addNode(terminated, asg)

	// a: claimed, then the replica died before terminating. The claim is written as
	// the replica writes it: its state and its view of the group.
	require.NoError(t, r.grant(claimedOnly))
	require.NoError(t, r.env.Kubelet.Fail(ctx, claimedOnly))
	time.Sleep(300 * time.Millisecond) // its Lease silent since
	r.claimAsDeadReplica(claimedOnly, idA)

	fresh := r.replacer("restarted")
	r.reconcileUntil("the claimed replacement finished", func() bool { return r.record(claimedOnly) == nil }, fresh)
	assert.Equal(t, 1, r.fake.Count("TerminateInstanceInAutoScalingGroup"), "terminated by the restarted replica")
	assert.False(t, r.nodeExists(claimedOnly))

	// b: terminated, then the replica died before the new node was Ready.
	require.NoError(t, r.grant(terminated))
	require.NoError(t, r.env.Kubelet.Fail(ctx, terminated))
	time.Sleep(1100 * time.Millisecond)
	first := r.replacer("first")
	r.reconcileUntil("terminated", func() bool { return r.record(terminated)["state"] == replace.StateReplacing }, first)
	again := r.replacer("second")
	r.reconcileUntil("replaced by another replica", func() bool { return r.record(terminated) == nil }, again)
	assert.Equal(t, 2, r.fake.Count("TerminateInstanceInAutoScalingGroup"), "each instance terminated once")
	assert.False(t, r.nodeExists(terminated))
}

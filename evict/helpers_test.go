package evict_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// testLabel confines a test's workloads to the test's own nodes.
const testLabel = "evict-test"

// cluster is one test's share of the control plane: a namespace and nodes labelled
// for it.
type cluster struct {
	t      *testing.T
	env    *controlplane.Env
	client kubernetes.Interface
	ns     string
	id     string // unique per test, in node names and the node label
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	env := controlplane.Shared(t)
	return &cluster{t: t, env: env, client: env.Client, ns: env.Namespace(t), id: simkubelet.RandomID()[:8]}
}

// addNode creates a Ready node for this test; a cordoned one if !schedulable.
func (c *cluster) addNode(suffix string, schedulable bool) string {
	c.t.Helper()
	name := "evict-" + c.id + "-" + suffix
	_, err := c.env.Kubelet.AddNode(context.Background(), name, simkubelet.NodeOptions{
		Labels:        map[string]string{testLabel: c.id, "kubernetes.io/hostname": name},
		Unschedulable: !schedulable,
	})
	require.NoError(c.t, err)
	c.t.Cleanup(func() { _ = c.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return name
}

// start starts a drain of the node as it is now.
func (c *cluster) start(d *evict.Drainer, node string) evict.Progress {
	c.t.Helper()
	n, err := c.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	require.NoError(c.t, err)
	return d.Start(n)
}

// cordon sets the node's spec.unschedulable, as the lock does in production.
func (c *cluster) cordon(node string, unschedulable bool) {
	c.t.Helper()
	patch := `{"spec":{"unschedulable":false}}`
	if unschedulable {
		patch = `{"spec":{"unschedulable":true}}`
	}
	_, err := c.client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	require.NoError(c.t, err)
}

// podSpec is a pod template's spec confined to the test's nodes.
func (c *cluster) podSpec() corev1.PodSpec {
	return corev1.PodSpec{
		NodeSelector: map[string]string{testLabel: c.id},
		Containers:   []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
	}
}

func (c *cluster) deployment(name string, replicas int32, mutate func(*corev1.PodSpec)) {
	c.t.Helper()
	labels := map[string]string{"app": name}
	spec := c.podSpec()
	if mutate != nil {
		mutate(&spec)
	}
	_, err := c.client.AppsV1().Deployments(c.ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
}

// pdb creates a PodDisruptionBudget for the pods labelled app=app.
func (c *cluster) pdb(name, app string, minAvailable, maxUnavailable *intstr.IntOrString) {
	c.t.Helper()
	_, err := c.client.PolicyV1().PodDisruptionBudgets(c.ns).Create(context.Background(), &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable:   minAvailable,
			MaxUnavailable: maxUnavailable,
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
}

// waitPDB waits until the disruption controller has computed the budget's status
// with healthy pods and allowed disruptions as given.
func (c *cluster) waitPDB(name string, healthy, allowed int32) {
	c.t.Helper()
	c.waitFor(time.Minute, "budget "+name+" status", func(ctx context.Context) (bool, error) {
		pdb, err := c.client.PolicyV1().PodDisruptionBudgets(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := pdb.Status
		return s.ObservedGeneration == pdb.Generation && s.CurrentHealthy == healthy && s.DisruptionsAllowed == allowed, nil
	})
}

// nodePods lists, from the API server, the pods bound to node.
func (c *cluster) nodePods(node string) []corev1.Pod {
	c.t.Helper()
	list, err := c.client.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	require.NoError(c.t, err)
	return list.Items
}

// waitRunning waits until n pods of the namespace labelled app=app are bound to node
// and ready, and returns them.
func (c *cluster) waitRunning(node, app string, n int) []corev1.Pod {
	c.t.Helper()
	var pods []corev1.Pod
	c.waitFor(time.Minute, app+" pods ready on "+node, func(context.Context) (bool, error) {
		pods = nil
		for _, p := range c.nodePods(node) {
			if p.Namespace == c.ns && p.Labels["app"] == app && ready(&p) && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return len(pods) == n, nil
	})
	return pods
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c *cluster) waitFor(timeout time.Duration, what string, cond wait.ConditionWithContextFunc) {
	c.t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, cond); err != nil {
		c.t.Fatalf("waiting for %s: %v\n%s", what, err, c.describe())
	}
}

// describe summarises the namespace's pods and events, for failure messages.
func (c *cluster) describe() string {
	var b strings.Builder
	ctx := context.Background()
	if pods, err := c.client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "pod %s node=%q phase=%s ready=%v deleting=%v\n", p.Name, p.Spec.NodeName, p.Status.Phase, ready(&p), p.DeletionTimestamp != nil)
		}
	}
	if nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: testLabel + "=" + c.id}); err == nil {
		for _, n := range nodes.Items {
			fmt.Fprintf(&b, "node %s unschedulable=%v taints=%v\n", n.Name, n.Spec.Unschedulable, n.Spec.Taints)
		}
	}
	if evs, err := c.client.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "event %s/%s %s: %s\n", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
	return b.String()
}

// drainer runs a Drainer until the test ends.
func (c *cluster) drainer(client kubernetes.Interface, opts evict.Options) *evict.Drainer {
	c.t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{c.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	d := evict.New(client, opts)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		d.Run(ctx)
	}()
	c.t.Cleanup(func() {
		cancel()
		<-stopped
	})
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// awaitDone waits for the drain's Done and returns its progress then.
func awaitDone(t *testing.T, d *evict.Drainer, node string, p evict.Progress, timeout time.Duration) evict.Progress {
	t.Helper()
	select {
	case <-p.Done:
	case <-time.After(timeout):
		now, _ := d.Progress(node)
		t.Fatalf("drain of %s not done after %s: %s (left: %v)", node, timeout, now, now.Left)
	}
	now, ok := d.Progress(node)
	require.True(t, ok)
	return now
}

// nodeEvents returns the reasons of the Events posted on node, with their notes.
func (c *cluster) nodeEvents(node string) []eventsv1.Event {
	c.t.Helper()
	list, err := c.client.EventsV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	require.NoError(c.t, err)
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "Node" && e.Regarding.Name == node {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EventTime.Before(&out[j].EventTime) })
	return out
}

// waitEventCount waits until node has n Events with the reason, and returns them all.
func (c *cluster) waitEventCount(node, reason string, n int) []eventsv1.Event {
	c.t.Helper()
	var evs []eventsv1.Event
	c.waitFor(30*time.Second, fmt.Sprintf("%d events %s on %s", n, reason, node), func(context.Context) (bool, error) {
		evs = c.nodeEvents(node)
		return countReason(evs, reason) >= n, nil
	})
	return evs
}

func countReason(events []eventsv1.Event, reason string) int {
	n := 0
	for _, e := range events {
		if e.Reason == reason {
			n++
		}
	}
	return n
}

// waitEvents waits until node has an Event with every reason given.
func (c *cluster) waitEvents(node string, reasons ...string) []eventsv1.Event {
	c.t.Helper()
	var evs []eventsv1.Event
	c.waitFor(30*time.Second, "events "+strings.Join(reasons, ", ")+" on "+node, func(context.Context) (bool, error) {
		evs = c.nodeEvents(node)
		for _, r := range reasons {
			if countReason(evs, r) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	return evs
}

// auditEntry is what the tests read of an audit log line.
type auditEntry struct {
	Verb      string `json:"verb"`
	Stage     string `json:"stage"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// audited returns the audit log's completed requests on pods of the namespace.
func (c *cluster) audited() []auditEntry {
	c.t.Helper()
	f, err := os.Open(c.env.AuditLog)
	require.NoError(c.t, err)
	defer f.Close()
	var out []auditEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e auditEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.ObjectRef == nil {
			continue
		}
		if e.Stage == "ResponseComplete" && e.ObjectRef.Resource == "pods" && e.ObjectRef.Namespace == c.ns {
			out = append(out, e)
		}
	}
	require.NoError(c.t, sc.Err())
	return out
}

// setPodStatus updates a pod's status, re-reading it on conflicts.
func (c *cluster) setPodStatus(name string, mutate func(*corev1.Pod)) {
	c.t.Helper()
	ctx := context.Background()
	c.waitFor(30*time.Second, "status of "+name+" updated", func(ctx2 context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		mutate(p)
		_, err = c.client.CoreV1().Pods(c.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// readySampler counts, every 50ms, the ready and not terminating pods labelled
// app=app, and keeps the smallest count seen.
type readySampler struct {
	stop    chan struct{}
	done    chan struct{}
	least   int
	samples int
}

func (c *cluster) sampleReady(app string) *readySampler {
	s := &readySampler{stop: make(chan struct{}), done: make(chan struct{}), least: 1 << 30}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			list, err := c.client.CoreV1().Pods(c.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
			if err == nil {
				n := 0
				for i := range list.Items {
					if ready(&list.Items[i]) && list.Items[i].DeletionTimestamp == nil {
						n++
					}
				}
				s.least = min(s.least, n)
				s.samples++
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops the sampler and returns the least ready count seen and how many
// samples were taken.
func (s *readySampler) finish() (least, samples int) {
	close(s.stop)
	<-s.done
	return s.least, s.samples
}

func uids(pods []corev1.Pod) map[types.UID]string {
	m := map[types.UID]string{}
	for _, p := range pods {
		m[p.UID] = p.Namespace + "/" + p.Name
	}
	return m
}

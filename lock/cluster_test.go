package lock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// cluster is one test's corner of the shared control plane: its namespace, its nodes
// (labelled with its id) and workloads confined to them, and a lock with the real
// drainer.
type cluster struct {
	t   *testing.T
	env *controlplane.Env
	ns  string
	id  string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	env := controlplane.Shared(t)
	return &cluster{t: t, env: env, ns: env.Namespace(t), id: simkubelet.RandomID()[:8]}
}

// addNode creates a Ready node of the test with the machine ID given (random if
// empty) and returns it with its Zincati ID.
func (c *cluster) addNode(name, machineID string) (*corev1.Node, string) {
	c.t.Helper()
	if machineID == "" {
		machineID = simkubelet.RandomID()
	}
	n, err := c.env.Kubelet.AddNode(context.Background(), name, simkubelet.NodeOptions{
		MachineID: machineID, Labels: map[string]string{"test": c.id, "kubernetes.io/hostname": name},
	})
	require.NoError(c.t, err)
	c.t.Cleanup(func() { _ = c.env.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	id, err := fleetlock.ZincatiID(machineID)
	require.NoError(c.t, err)
	return n, id
}

// lock starts a lock whose drains are the evict package's, posting Events.
func (c *cluster) lock(opts Options) (*Lock, *evict.Drainer) {
	c.t.Helper()
	return c.lockWithDrains(opts, evict.Options{})
}

// lockWithDrains is lock with the drains' options.
func (c *cluster) lockWithDrains(opts Options, dopts evict.Options) (*Lock, *evict.Drainer) {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: c.env.Client.EventsV1()})
	require.NoError(c.t, broadcaster.StartRecordingToSinkWithContext(ctx))
	opts.Recorder = broadcaster.NewRecorder(scheme.Scheme, "reboot-manager")
	dopts.Recorder = opts.Recorder
	d := evict.New(c.env.Client, dopts)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		d.Run(ctx)
	}()
	c.t.Cleanup(func() {
		cancel()
		<-stopped
		broadcaster.Shutdown()
	})
	return startLockWith(c.t, c.env.Client, d, opts), d
}

// deployment creates a Deployment of replicas pods on the test's nodes; mutate may
// change their spec.
func (c *cluster) deployment(name string, replicas int32, mutate func(*corev1.PodSpec)) {
	c.t.Helper()
	labels := map[string]string{"app": name}
	spec := corev1.PodSpec{
		NodeSelector: map[string]string{"test": c.id},
		Containers:   []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
	}
	if mutate != nil {
		mutate(&spec)
	}
	_, err := c.env.Client.AppsV1().Deployments(c.ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
}

// pod creates a pod bound to node, owned by nothing.
func (c *cluster) pod(name, node string) {
	c.t.Helper()
	_, err := c.env.Client.CoreV1().Pods(c.ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
}

// budget creates a PodDisruptionBudget for the pods labelled app=app.
func (c *cluster) budget(name, app string, maxUnavailable int) {
	c.t.Helper()
	_, err := c.env.Client.PolicyV1().PodDisruptionBudgets(c.ns).Create(context.Background(), &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: new(intstr.FromInt32(int32(maxUnavailable))),
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
}

// mustLeave lists, from the API server, the pods bound to node that a drain must move.
func (c *cluster) mustLeave(node string) []string {
	c.t.Helper()
	list, err := c.env.Client.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	require.NoError(c.t, err)
	var left []string
	for i := range list.Items {
		if p := &list.Items[i]; evict.MustLeave(p) {
			left = append(left, p.Namespace+"/"+p.Name+" ("+string(p.Status.Phase)+")")
		}
	}
	return left
}

// waitRunning waits until a pod of app runs on node.
func (c *cluster) waitRunning(node, app string) {
	c.t.Helper()
	c.waitFor(app+" running on "+node, func(ctx context.Context) (bool, error) {
		list, err := c.env.Client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err
		}
		for _, p := range list.Items {
			if p.Spec.NodeName == node && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				return true, nil
			}
		}
		return false, nil
	})
}

func (c *cluster) waitFor(what string, cond wait.ConditionWithContextFunc) {
	c.t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, cond); err != nil {
		c.t.Fatalf("waiting for %s: %v", what, err)
	}
}

// holding waits until node holds a slot.
func (c *cluster) holding(node string) *corev1.Node {
	c.t.Helper()
	var n *corev1.Node
	c.waitFor(node+" holding", func(ctx context.Context) (bool, error) {
		var err error
		n, err = c.env.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && lockOf(n).State == StateRebooting, nil
	})
	return n
}

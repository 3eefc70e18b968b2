package simkubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Options tune the simulated kubelet. The zero value works.
type Options struct {
	// TerminationDelay caps how long a deleted pod stays Terminating before it is gone.
	// Default 200ms; a pod with a shorter grace period goes sooner.
	TerminationDelay time.Duration
	// Workers is how many pods are handled at once. Default 8.
	Workers int
	// LeasePeriod is how often each node's kubelet renews its Lease in
	// kube-node-lease, except while the node is down. A real kubelet renews every 10
	// s; the default, 2s, keeps tests short. NodeOptions.LeasePeriod overrides it.
	LeasePeriod time.Duration
}

// Kubelet simulates the kubelets of a cluster's nodes.
type Kubelet struct {
	client kubernetes.Interface
	opts   Options
	queue  workqueue.TypedRateLimitingInterface[string]
	pods   cache.Indexer

	skew atomic.Int64 // nanoseconds the kubelets' clock is off

	mu     sync.Mutex
	down   map[string]bool      // nodes that are rebooting: their pods are not started
	leased map[string]types.UID // nodes whose Lease the kubelet renews: the Node object
	ctx    context.Context      // Start's: it bounds the Lease renewals
}

// Start runs the simulated kubelet until ctx ends. It returns once its pod cache has
// synced.
func Start(ctx context.Context, client kubernetes.Interface, opts Options) (*Kubelet, error) {
	if opts.TerminationDelay <= 0 {
		opts.TerminationDelay = 200 * time.Millisecond
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.LeasePeriod <= 0 {
		opts.LeasePeriod = 2 * time.Second
	}
	k := &Kubelet{
		client: client,
		opts:   opts,
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		down:   map[string]bool{},
		leased: map[string]types.UID{},
		ctx:    ctx,
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().Pods().Informer()
	k.pods = inf.GetIndexer()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("simkubelet: pod cache did not sync: %w", ctx.Err())
	}
	for range opts.Workers {
		go k.work(ctx)
	}
	go func() {
		<-ctx.Done()
		k.queue.ShutDown()
	}()
	return k, nil
}

func (k *Kubelet) work(ctx context.Context) {
	for {
		key, quit := k.queue.Get()
		if quit {
			return
		}
		requeue, err := k.sync(ctx, key)
		switch {
		case err != nil && ctx.Err() == nil:
			k.queue.AddRateLimited(key)
		case requeue > 0:
			k.queue.Forget(key)
			k.queue.AddAfter(key, requeue)
		default:
			k.queue.Forget(key)
		}
		k.queue.Done(key)
	}
}

// sync brings one pod to where a kubelet would have it; a positive duration asks to be
// called again after it.
func (k *Kubelet) sync(ctx context.Context, key string) (time.Duration, error) {
	obj, exists, err := k.pods.GetByKey(key)
	if err != nil || !exists {
		return 0, err
	}
	pod := obj.(*corev1.Pod)
	if pod.Spec.NodeName == "" {
		return 0, nil
	}
	if pod.DeletionTimestamp != nil {
		return k.finishDeletion(ctx, pod)
	}
	if k.isDown(pod.Spec.NodeName) || pod.Status.Phase != corev1.PodPending {
		return 0, nil
	}
	return 0, k.run(ctx, pod)
}

// finishDeletion removes a terminating pod once its termination delay has passed.
func (k *Kubelet) finishDeletion(ctx context.Context, pod *corev1.Pod) (time.Duration, error) {
	delay := k.opts.TerminationDelay
	if g := pod.DeletionGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < delay {
		delay = time.Duration(*g) * time.Second
	}
	// DeletionTimestamp is the deletion time plus the grace period.
	start := pod.DeletionTimestamp.Add(-time.Duration(ptrOr(pod.DeletionGracePeriodSeconds, 0)) * time.Second)
	if wait := time.Until(start.Add(delay)); wait > 0 {
		return wait, nil
	}
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return 0, nil
	}
	return 0, err
}

// run marks a pending pod Running and Ready, as if its containers had started.
func (k *Kubelet) run(ctx context.Context, pod *corev1.Pod) error {
	now := metav1.Now()
	pod = pod.DeepCopy()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.PodIP = "10.244.0.1"
	pod.Status.PodIPs = []corev1.PodIP{{IP: pod.Status.PodIP}}
	pod.Status.HostIP = "127.0.0.1"
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: true, Started: new(bool(true)),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone, or changed: the informer brings the new version
	}
	return err
}

// NodeOptions describe a node to create. The zero value works.
type NodeOptions struct {
	// MachineID is status.nodeInfo.machineID, as kubelet reports /etc/machine-id.
	// Default: 32 random lowercase hex digits.
	MachineID string
	// Labels and Annotations are set on the Node.
	Labels, Annotations map[string]string
	// Unschedulable starts the node cordoned.
	Unschedulable bool
	// ProviderID is spec.providerID, such as aws:///eu-west-1a/i-0123456789abcdef0.
	ProviderID string
	// LeasePeriod overrides Options.LeasePeriod for this node.
	LeasePeriod time.Duration
}

// AddNode creates a Ready node named name, whose kubelet renews its Lease in
// kube-node-lease every LeasePeriod while the node is up, until the Node is deleted.
func (k *Kubelet) AddNode(ctx context.Context, name string, opts NodeOptions) (*corev1.Node, error) {
	if opts.MachineID == "" {
		opts.MachineID = RandomID()
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: opts.Labels, Annotations: opts.Annotations},
		Spec:       corev1.NodeSpec{Unschedulable: opts.Unschedulable, ProviderID: opts.ProviderID},
	}
	created, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	created.Status = nodeStatus(opts.MachineID, RandomID(), corev1.ConditionTrue, k.now())
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, err
	}
	period := opts.LeasePeriod
	if period <= 0 {
		period = k.opts.LeasePeriod
	}
	k.startLease(ctx, created, period)
	return k.setNotReadyTaint(ctx, name, false)
}

// setNotReadyTaint adds or removes the node.kubernetes.io/not-ready:NoSchedule taint,
// as the node-lifecycle controller does when a node's Ready condition changes (the
// API server adds it to every new node).
func (k *Kubelet) setNotReadyTaint(ctx context.Context, name string, present bool) (*corev1.Node, error) {
	for {
		node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if retry(ctx, err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var taints []corev1.Taint
		for _, t := range node.Spec.Taints {
			if t.Key != corev1.TaintNodeNotReady {
				taints = append(taints, t)
			}
		}
		if present {
			taints = append(taints, corev1.Taint{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule})
		}
		node.Spec.Taints = taints
		updated, err := k.client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) && !retry(ctx, err) {
			return updated, err
		}
	}
}

// Reboot simulates a reboot of node: it goes NotReady and starts no pod; after downFor
// it comes back Ready with a new boot ID and starts what is pending. Pods still bound
// to it (after a drain: DaemonSet and mirror pods) keep their objects, as their
// containers restart in place. Reboot returns once the node is back.
func (k *Kubelet) Reboot(ctx context.Context, name string, downFor time.Duration) error {
	defer k.setDown(name, false)
	if err := k.Fail(ctx, name); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(downFor):
	}
	if err := k.setNodeStatus(ctx, name, corev1.ConditionTrue, RandomID()); err != nil {
		return err
	}
	if _, err := k.setNotReadyTaint(ctx, name, false); err != nil {
		return err
	}
	for _, obj := range k.pods.List() {
		if pod := obj.(*corev1.Pod); pod.Spec.NodeName == name {
			if key, err := cache.MetaNamespaceKeyFunc(pod); err == nil {
				k.queue.Add(key)
			}
		}
	}
	return nil
}

// SetClockSkew sets how far the kubelets' clock is off (negative: behind). Condition
// and Lease times are written on that clock, in whole seconds, as a kubelet does.
func (k *Kubelet) SetClockSkew(d time.Duration) { k.skew.Store(int64(d)) }

// now is the time on the kubelets' clock, in whole seconds.
func (k *Kubelet) now() metav1.Time {
	return metav1.NewTime(time.Now().Add(time.Duration(k.skew.Load())).Truncate(time.Second))
}

// Freeze stops node's kubelet without a word, as a machine that reboots with no
// graceful node shutdown: the Node keeps its last status (Ready, with the old boot
// ID), its Lease is no longer renewed, and its pods are not started. Boot ends it.
func (k *Kubelet) Freeze(name string) { k.setDown(name, true) }

// Boot brings node's kubelet back after Freeze or Fail, as after a reboot: it posts
// Ready with a new boot ID, renews its Lease, and starts what is pending.
func (k *Kubelet) Boot(ctx context.Context, name string) error {
	if err := k.setNodeStatus(ctx, name, corev1.ConditionTrue, RandomID()); err != nil {
		return err
	}
	if _, err := k.setNotReadyTaint(ctx, name, false); err != nil {
		return err
	}
	k.setDown(name, false)
	k.renewLease(ctx, name)
	k.requeue(name)
	return nil
}

// requeue makes the kubelet look again at the pods bound to node.
func (k *Kubelet) requeue(name string) {
	for _, obj := range k.pods.List() {
		if pod := obj.(*corev1.Pod); pod.Spec.NodeName == name {
			if key, err := cache.MetaNamespaceKeyFunc(pod); err == nil {
				k.queue.Add(key)
			}
		}
	}
}

// Fail takes node down for good, as a machine that does not boot again: NotReady, its
// pods no longer started or stopped.
func (k *Kubelet) Fail(ctx context.Context, name string) error {
	k.setDown(name, true)
	if err := k.setNodeStatus(ctx, name, corev1.ConditionFalse, ""); err != nil {
		return err
	}
	_, err := k.setNotReadyTaint(ctx, name, true)
	return err
}

// setNodeStatus sets the Ready condition and, when bootID is not empty, the boot ID.
// Like a kubelet, it keeps trying while the API server is unreachable.
func (k *Kubelet) setNodeStatus(ctx context.Context, name string, ready corev1.ConditionStatus, bootID string) error {
	for {
		node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if retry(ctx, err) {
			continue
		}
		if err != nil {
			return err
		}
		if bootID == "" {
			bootID = node.Status.NodeInfo.BootID
		}
		node.Status = nodeStatus(node.Status.NodeInfo.MachineID, bootID, ready, k.now())
		_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) && !retry(ctx, err) {
			return err
		}
	}
}

// retry reports whether err is worth another try after a pause (the API server is
// unreachable or overloaded), and pauses.
func retry(ctx context.Context, err error) bool {
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) || apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(200 * time.Millisecond):
		return true
	}
}

func nodeStatus(machineID, bootID string, ready corev1.ConditionStatus, now metav1.Time) corev1.NodeStatus {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("128Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	return corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: ready, Reason: "SimulatedKubelet",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: machineID, BootID: bootID, SystemUUID: machineID,
			KubeletVersion: "v1.36.3", OSImage: "Fedora CoreOS (simulated)",
			OperatingSystem: "linux", Architecture: "amd64",
		},
	}
}

func (k *Kubelet) setDown(node string, down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if down {
		k.down[node] = true
	} else {
		delete(k.down, node)
	}
}

func (k *Kubelet) isDown(node string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.down[node]
}

// RandomID returns 32 random lowercase hex digits, the form of a machine or boot ID.
func RandomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

package fleetsim

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// Unkind are the modes in which the fleet behaves as real clusters do, and kind
// simulators do not. The zero value is the kind fleet.
type Unkind struct {
	// QuietReboots: a reboot is never marked NotReady (no graceful node shutdown): the
	// Node keeps Ready and the old boot ID until the kubelet posts again.
	QuietReboots bool
	// LateKubelet: after a reboot, Zincati sends steady-state at once, and the kubelet
	// posts its first status and Lease renewal only this long after (a quiet reboot).
	LateKubelet time.Duration
	// ClockSkew: the kubelets' clock is this far off (negative: behind); condition and
	// Lease times are in whole seconds.
	ClockSkew time.Duration
	// Recreate, if set, names nodes whose Node is deleted and created again under the
	// same name (a new UID, the same machine) when they first hold a slot.
	Recreate func(node string) bool
	// ReRegister, if set, names nodes whose machine comes back from its reboot under a
	// new Node name (the name plus "-r"), the old Node left NotReady and holding.
	ReRegister func(node string) bool
	// TolerantPods: when a node starts to hold a slot, a pod that tolerates every taint
	// (the cordon's included) is bound to it, as by a controller that ignores cordons.
	TolerantPods bool
	// PodFinalizers: the workload's pods carry a finalizer that a controller removes
	// only this long after their deletion.
	PodFinalizers time.Duration
}

// finalizer is the workload pods' finalizer under PodFinalizers.
const finalizer = "fleetsim/linger"

func (u Unkind) finalizers() []string {
	if u.PodFinalizers > 0 {
		return []string{finalizer}
	}
	return nil
}

// mark records on n the modes that name it.
func (u Unkind) mark(n *simNode) {
	n.recreate = u.Recreate != nil && u.Recreate(n.name)
	if u.ReRegister != nil && u.ReRegister(n.name) {
		n.reRegister = n.name + "-r"
	}
}

// startUnkind starts what the modes need while the fleet rolls; the function returned
// stops it.
func (f *Fleet) startUnkind(ctx context.Context) func() {
	f.kubelet.SetClockSkew(f.opts.Unkind.ClockSkew)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if f.opts.Unkind.PodFinalizers > 0 {
			wait.UntilWithContext(ctx, func(ctx context.Context) { f.dropFinalizers(ctx, f.opts.Unkind.PodFinalizers) }, 200*time.Millisecond)
		}
	}()
	return func() {
		cancel()
		<-done
		f.kubelet.SetClockSkew(0)
	}
}

// dropFinalizers removes the finalizer from the fleet's pods deleted at least after ago.
func (f *Fleet) dropFinalizers(ctx context.Context, after time.Duration) {
	pods, err := f.client.CoreV1().Pods(f.opts.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		if len(p.Finalizers) == 0 || p.DeletionTimestamp == nil && after > 0 ||
			p.DeletionTimestamp != nil && time.Since(p.DeletionTimestamp.Time) < after {
			continue
		}
		_, _ = f.client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	}
}

// reboot reboots n as its mode says, and sends steady-state until a 2xx.
func (f *Fleet) reboot(ctx context.Context, n *simNode, params fleetlock.ClientParams) error {
	u := f.opts.Unkind
	switch {
	case n.reRegister != "":
		return f.comeBackAs(ctx, n, params)
	case !u.QuietReboots && u.LateKubelet <= 0:
		if err := f.kubelet.Reboot(ctx, n.name, f.opts.Downtime); err != nil {
			return fmt.Errorf("reboot: %w", err)
		}
		f.backNow(n)
		return f.untilOK(ctx, n, params, false)
	}
	f.kubelet.Freeze(n.name)
	if err := sleep(ctx, f.opts.Downtime); err != nil {
		return err
	}
	if u.LateKubelet <= 0 {
		if err := f.kubelet.Boot(ctx, n.name); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
		f.backNow(n)
		return f.untilOK(ctx, n, params, false)
	}
	// Zincati starts and sends steady-state before the kubelet has posted anything.
	booted := make(chan error, 1)
	go func() {
		if err := sleep(ctx, u.LateKubelet); err != nil {
			booted <- err
			return
		}
		err := f.kubelet.Boot(ctx, n.name)
		f.backNow(n)
		booted <- err
	}()
	err := f.untilOK(ctx, n, params, false)
	if berr := <-booted; berr != nil && err == nil {
		err = fmt.Errorf("boot: %w", berr)
	}
	return err
}

func (f *Fleet) backNow(n *simNode) {
	n.mark(&n.back)
	f.emit(n, PhaseBack, "Ready with a new boot ID")
}

// comeBackAs takes n's Node down for good and brings its machine back under the name
// n.reRegister, then sends steady-state until a 2xx.
func (f *Fleet) comeBackAs(ctx context.Context, n *simNode, params fleetlock.ClientParams) error {
	if err := f.kubelet.Fail(ctx, n.name); err != nil {
		return fmt.Errorf("fail: %w", err)
	}
	f.kubelet.StopLease(n.name)
	if err := sleep(ctx, f.opts.Downtime); err != nil {
		return err
	}
	if _, err := f.kubelet.AddNode(ctx, n.reRegister, simkubelet.NodeOptions{
		MachineID: n.machineID, Labels: n.labels, ProviderID: n.providerID,
	}); err != nil {
		return fmt.Errorf("come back as %s: %w", n.reRegister, err)
	}
	n.mark(&n.back)
	f.emit(n, PhaseBack, "back as Node "+n.reRegister)
	return f.untilOK(ctx, n, params, false)
}

// recreate deletes n's Node and creates it again, with the same name and machine, as
// an operator or a cloud controller may; its Zincati knows nothing of it.
func (f *Fleet) recreate(ctx context.Context, n *simNode) {
	nodes := f.client.CoreV1().Nodes()
	if err := nodes.Delete(ctx, n.name, metav1.DeleteOptions{}); err != nil {
		f.opts.Log("%s: recreate: %v", n.name, err)
		return
	}
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if _, err := f.kubelet.AddNode(ctx, n.name, simkubelet.NodeOptions{
		MachineID: n.machineID, Labels: n.labels, ProviderID: n.providerID,
	}); err != nil {
		f.opts.Log("%s: recreate: %v", n.name, err)
		return
	}
	f.emit(n, "", "Node deleted and created again")
}

// addTolerantPod binds to node a pod that tolerates every taint, the cordon's included.
func (f *Fleet) addTolerantPod(ctx context.Context, node string) {
	_, err := f.client.CoreV1().Pods(f.opts.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: f.opts.Name + "-tolerant-", Labels: map[string]string{"app": "tolerant"}},
		Spec: corev1.PodSpec{
			NodeName:    node,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "t", Image: "registry.invalid/tolerant:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		f.opts.Log("%s: tolerant pod: %v", node, err)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

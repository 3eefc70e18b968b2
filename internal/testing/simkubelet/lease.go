package simkubelet

import (
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LeaseNamespace is where kubelets keep their node Leases.
const LeaseNamespace = corev1.NamespaceNodeLease

// startLease renews node's Lease now and then every period, as its kubelet does,
// except while the node is down; it stops when that Node object is gone (deleted, or
// re-created under its name), at StopLease, or when Start's context ends.
func (k *Kubelet) startLease(ctx context.Context, node *corev1.Node, period time.Duration) {
	k.mu.Lock()
	k.leased[node.Name] = node.UID
	k.mu.Unlock()
	k.renewLease(ctx, node.Name)
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-k.ctx.Done():
				return
			case <-t.C:
			}
			k.mu.Lock()
			uid, ok := k.leased[node.Name]
			k.mu.Unlock()
			if !ok || uid != node.UID {
				return
			}
			if !k.isDown(node.Name) {
				k.renewLease(k.ctx, node.Name)
			}
		}
	}()
}

// renewLease creates or renews node's Lease: holder the node, 40 s, renewTime on the
// kubelets' clock (Options' skew, microseconds as a kubelet writes it), owned by the
// Node so that it goes with it. A deleted Node's Lease is no longer renewed.
func (k *Kubelet) renewLease(ctx context.Context, name string) {
	node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		k.StopLease(name)
		return
	}
	if err != nil {
		return // the API server is away: try at the next renewal
	}
	owner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
	leases := k.client.CoordinationV1().Leases(LeaseNamespace)
	now := metav1.NewMicroTime(time.Now().Add(time.Duration(k.skew.Load())))
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, _ = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: LeaseNamespace, OwnerReferences: owner},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: new(name), LeaseDurationSeconds: new(int32(40)),
				RenewTime: &now},
		}, metav1.CreateOptions{})
		return
	}
	if err != nil {
		return
	}
	if len(lease.OwnerReferences) == 0 || lease.OwnerReferences[0].UID != node.UID {
		lease.OwnerReferences = owner // left by an earlier Node of the same name
	}
	lease.Spec.RenewTime = &now
	_, _ = leases.Update(ctx, lease, metav1.UpdateOptions{})
}

// StopLease stops renewing node's Lease, as when its kubelet is gone for good.
func (k *Kubelet) StopLease(name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.leased, name)
}

package simkubelet

import (
	"context"
	"maps"
	"slices"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LeaseNamespace is where kubelets keep their node Leases.
const LeaseNamespace = "kube-node-lease"

// renewLeases renews the Lease of every node the kubelet runs that is not down.
func (k *Kubelet) renewLeases(ctx context.Context) {
	k.mu.Lock()
	names := slices.Collect(maps.Keys(k.leased))
	k.mu.Unlock()
	for _, name := range names {
		if !k.isDown(name) {
			k.renewLease(ctx, name)
		}
	}
}

// renewLease creates or renews node's Lease, as a kubelet does every 10 seconds. A
// deleted Node's Lease is no longer renewed.
func (k *Kubelet) renewLease(ctx context.Context, name string) {
	node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		k.StopLease(name)
		return
	}
	if err != nil {
		return // the API server is away: try at the next renewal
	}
	leases := k.client.CoordinationV1().Leases(LeaseNamespace)
	now := metav1.NewMicroTime(k.now().Time)
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		owner := metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
		_, _ = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: LeaseNamespace, OwnerReferences: []metav1.OwnerReference{owner}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: new(name), LeaseDurationSeconds: new(int32(40)),
				RenewTime: &now},
		}, metav1.CreateOptions{})
		return
	}
	if err != nil {
		return
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

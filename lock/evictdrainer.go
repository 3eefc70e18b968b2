package lock

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
)

// EvictDrainer adapts evict.Drainer, whose drains are keyed by node name, to the lock's
// Drainer, whose drains belong to one Node object (its UID). It is a shim until the
// evict package binds its drains to UIDs itself: a Start for another UID of the same
// name forgets the old drain first, and Remaining lists the node's pods from the API
// server and restarts the drain when any must still leave.
type EvictDrainer struct {
	*evict.Drainer
	client kubernetes.Interface
	mu     sync.Mutex
	uids   map[string]types.UID // the Node object each name's drain belongs to
}

var _ Drainer = (*EvictDrainer)(nil)

// NewEvictDrainer returns d as a Drainer; Remaining lists pods with client.
func NewEvictDrainer(d *evict.Drainer, client kubernetes.Interface) *EvictDrainer {
	return &EvictDrainer{Drainer: d, client: client, uids: map[string]types.UID{}}
}

// Start starts draining node unless a drain of this Node object is under way or done.
func (d *EvictDrainer) Start(node *corev1.Node) evict.Progress {
	d.mu.Lock()
	uid, known := d.uids[node.Name]
	d.uids[node.Name] = node.UID
	d.mu.Unlock()
	if known && uid != node.UID {
		d.Drainer.Forget(node.Name) // an earlier Node object of the same name
	}
	return d.Drainer.Start(node.Name)
}

// Forget stops any drain of node.
func (d *EvictDrainer) Forget(node string) {
	d.mu.Lock()
	delete(d.uids, node)
	d.mu.Unlock()
	d.Drainer.Forget(node)
}

// Remaining lists, from the API server, the pods bound to node that must leave, and
// restarts the drain if there are any.
func (d *EvictDrainer) Remaining(ctx context.Context, node *corev1.Node) ([]types.NamespacedName, error) {
	pods, err := d.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node.Name).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods of node %s: %w", node.Name, err)
	}
	var left []types.NamespacedName
	for i := range pods.Items {
		if p := &pods.Items[i]; evict.MustLeave(p) {
			left = append(left, types.NamespacedName{Namespace: p.Namespace, Name: p.Name})
		}
	}
	if len(left) > 0 {
		d.Drainer.Forget(node.Name)
		d.Start(node)
	}
	return left, nil
}

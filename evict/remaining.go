package evict

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// Remaining lists, from the API server (not a cache), the pods bound to node that
// must leave it (see MustLeave), sorted; an error if the LIST fails. A pod
// terminating on a node whose kubelet is silent (Ready Unknown) past
// Options.SkipWaitForDeleteTimeout (judged from
// node as given) is not listed: the drain counts it gone. Call it just
// before telling the node to reboot. If it finds any and the drain of this Node
// object had ended Drained, the drain goes back to evicting them (budgets respected)
// with a new Done: call Start for its progress. A drain under way finds them itself
// before it reports Drained.
func (d *Drainer) Remaining(ctx context.Context, node *corev1.Node) ([]types.NamespacedName, error) {
	pods, err := d.listNodePods(ctx, node.Name)
	if err != nil {
		return nil, err
	}
	var left []types.NamespacedName
	now := d.opts.Clock.Now()
	for i := range pods {
		if at := d.skipWaitAt(node, &pods[i]); !at.IsZero() && !now.Before(at) {
			continue
		}
		if MustLeave(&pods[i]) {
			left = append(left, types.NamespacedName{Namespace: pods[i].Namespace, Name: pods[i].Name})
		}
	}
	sort.Slice(left, func(i, j int) bool { return left[i].String() < left[j].String() })
	if len(left) == 0 {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if dr := d.drains[node.Name]; dr != nil && dr.uid == node.UID && !d.stopped && dr.progress.Phase == PhaseDrained {
		dr.log.Info("drain resumed: pods that must leave are on the node", "pods", len(left))
		delete(d.drains, node.Name)
		next := newDrain(d, node, dr)
		next.resume(dr)
		d.launch(next)
	}
	return left, nil
}

// listNodePods lists, from the API server, the pods bound to node.
func (d *Drainer) listNodePods(ctx context.Context, node string) ([]corev1.Pod, error) {
	list, err := d.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list the pods of node %s: %w", node, err)
	}
	return list.Items, nil
}

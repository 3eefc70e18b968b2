// Package locktest holds fakes of lock.Drainer for the tests of the lock and of the
// packages built on it (policy, replace). They drain nothing: a test decides when a
// drain is over. Remaining, which must be a fresh read, lists the pods bound to the
// node from the API server when the fake has a Client, with the drain's own filter
// (evict.MustLeave).
package locktest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/evict"
)

// Remaining lists, from the API server, the pods bound to node that a drain must
// move (evict.MustLeave); with a nil client, none.
func Remaining(ctx context.Context, client kubernetes.Interface, node *corev1.Node) ([]types.NamespacedName, error) {
	if client == nil {
		return nil, nil
	}
	pods, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
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
	return left, nil
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// Drained is a Drainer whose drains are over at once.
type Drained struct {
	NeverGaveUp
	// Client, if set, is what Remaining lists pods with.
	Client kubernetes.Interface
	// Forgot counts the calls of Forget.
	Forgot atomic.Int32
	// Starts counts the calls of Start.
	Starts atomic.Int32
}

// Start returns a drained progress.
func (d *Drained) Start(node *corev1.Node) evict.Progress {
	d.Starts.Add(1)
	return evict.Progress{Node: node.Name, Drained: true, Done: closed()}
}

// Forget counts the call.
func (d *Drained) Forget(string) { d.Forgot.Add(1) }

// Remaining lists the pods that must leave node (none without a Client).
func (d *Drained) Remaining(ctx context.Context, node *corev1.Node) ([]types.NamespacedName, error) {
	return Remaining(ctx, d.Client, node)
}

// Gated is a Drainer whose drains end when the test calls Finish. A drain is bound to
// the Node's UID: a Start for another UID of the same name starts a fresh drain.
type Gated struct {
	NeverGaveUp
	// Client, if set, is what Remaining lists pods with.
	Client kubernetes.Interface
	// Started receives a node's name when a drain of it starts.
	Started chan string

	mu     sync.Mutex
	drains map[string]gated // by node name
}

type gated struct {
	uid  types.UID
	done chan struct{}
}

// NewGated returns a Gated drainer.
func NewGated() *Gated {
	return &Gated{drains: map[string]gated{}, Started: make(chan string, 16)}
}

// Start starts a drain of node, unless one of the same Node object is under way or
// over, and returns its progress.
func (d *Gated) Start(node *corev1.Node) evict.Progress {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, ok := d.drains[node.Name]
	if !ok || g.uid != node.UID {
		g = gated{uid: node.UID, done: make(chan struct{})}
		d.drains[node.Name] = g
		d.Started <- node.Name
	}
	select {
	case <-g.done:
		return evict.Progress{Node: node.Name, Drained: true, Done: g.done}
	default:
		return evict.Progress{Node: node.Name, PodsLeft: 1, Pods: 1, Done: g.done}
	}
}

// Forget drops the drain of node.
func (d *Gated) Forget(node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.drains, node)
}

// Finish ends node's drain, which must have started.
func (d *Gated) Finish(node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	close(d.drains[node].done)
}

// Remaining lists the pods that must leave node (none without a Client).
func (d *Gated) Remaining(ctx context.Context, node *corev1.Node) ([]types.NamespacedName, error) {
	return Remaining(ctx, d.Client, node)
}

// Endless is a Drainer whose drains never finish; it records what was forgotten.
type Endless struct {
	NeverGaveUp
	mu     sync.Mutex
	done   map[string]chan struct{}
	forgot []string
}

// Start returns the progress of a drain that is never over.
func (d *Endless) Start(node *corev1.Node) evict.Progress {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		d.done = map[string]chan struct{}{}
	}
	if d.done[node.Name] == nil {
		d.done[node.Name] = make(chan struct{})
	}
	return evict.Progress{Node: node.Name, PodsLeft: 1, Done: d.done[node.Name]}
}

// Forget records node and stops its drain.
func (d *Endless) Forget(node string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgot = append(d.forgot, node)
	if c := d.done[node]; c != nil {
		close(c)
		delete(d.done, node)
	}
}

// Forgotten returns the nodes passed to Forget, in order.
func (d *Endless) Forgotten() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.forgot...)
}

// Remaining returns nothing.
func (d *Endless) Remaining(context.Context, *corev1.Node) ([]types.NamespacedName, error) {
	return nil, nil
}

// NeverGaveUp is embedded by the fakes: no drain of theirs ever gives up for good.
type NeverGaveUp struct{}

// GaveUp returns false: the node may be drained.
func (NeverGaveUp) GaveUp(_ context.Context, node *corev1.Node) (evict.Progress, bool, error) {
	return evict.Progress{Node: node.Name, NodeUID: node.UID}, false, nil
}

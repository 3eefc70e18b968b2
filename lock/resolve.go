package lock

import corev1 "k8s.io/api/core/v1"

// Resolve returns the one node whose Zincati ID is id, from the node cache: it makes no
// API request. It fails as PreReboot would: an error matching fleetlock.ErrUnknownNode
// or fleetlock.ErrAmbiguousNode, or an *APIError until the cache has synced.
//
// The node is the cache's own copy, stripped to what the lock reads (metadata with the
// rebootmanager/ annotations, spec, the Ready condition, node info and
// status.addresses): read it, never modify it.
func (l *Lock) Resolve(id string) (*corev1.Node, error) { return l.resolve(id) }

// Nodes returns every node in the cache, stripped as for Resolve: read them, never
// modify them.
func (l *Lock) Nodes() []*corev1.Node {
	objs := l.nodes.GetIndexer().List()
	nodes := make([]*corev1.Node, len(objs))
	for i, o := range objs {
		nodes[i] = o.(*corev1.Node)
	}
	return nodes
}

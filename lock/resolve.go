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

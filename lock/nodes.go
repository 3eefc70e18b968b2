package lock

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// zincatiID returns the ID Zincati sends for node n: its override annotation when
// set, else derived from the machine ID kubelet reports; "" for a node without either,
// which is never resolved, so it can never be granted a reboot.
func zincatiID(n *corev1.Node) string {
	if id := normalizeID(n.Annotations[AnnotationZincatiID]); id != "" {
		return id
	}
	id, err := fleetlock.ZincatiID(n.Status.NodeInfo.MachineID)
	if err != nil {
		return "" // a node without a usable machine ID is simply not resolved
	}
	return id
}

// idMap maps Zincati IDs to the cached nodes that carry them. The cache's event
// handlers keep it (nodeAdded, nodeUpdated, nodeDeleted), so that resolving an ID,
// twice per FleetLock request (the access guard's and the lock's), is one map read
// under a read lock, with no allocation, rather than an index lookup that copies.
type idMap struct {
	mu sync.RWMutex
	m  map[string][]*corev1.Node // by ID; a slice is replaced, never changed in place
}

// update replaces old (nil: none) by n (nil: deleted) in the map.
func (m *idMap) update(old, n *corev1.Node) {
	var oldID, newID string
	if old != nil {
		oldID = zincatiID(old)
	}
	if n != nil {
		newID = zincatiID(n)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string][]*corev1.Node{}
	}
	if old != nil && oldID != "" {
		m.set(oldID, without(m.m[oldID], old.Name))
	}
	if n != nil && newID != "" {
		m.set(newID, append(without(m.m[newID], n.Name), n))
	}
}

func (m *idMap) set(id string, ns []*corev1.Node) {
	if len(ns) == 0 {
		delete(m.m, id)
	} else {
		m.m[id] = ns
	}
}

// without returns a new slice of ns without the node named name.
func without(ns []*corev1.Node, name string) []*corev1.Node {
	out := make([]*corev1.Node, 0, len(ns)+1)
	for _, n := range ns {
		if n.Name != name {
			out = append(out, n)
		}
	}
	return out
}

// get returns the nodes whose Zincati ID is id; the slice is shared: read it only.
func (m *idMap) get(id string) []*corev1.Node {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.m[id]
}

// normalizeID writes an ID as Zincati sends it: Zincati's identity.node_uuid may be
// written with dashes and in upper case (a UUID), and is sent as 32 lowercase hex
// digits.
func normalizeID(id string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(id), "-", ""))
}

// byGroup indexes the node cache by the group of a node's claim or hold.
const byGroup = "group"

// lockGroup is the byGroup index function; nodes in state Ready are not indexed.
func lockGroup(obj any) ([]string, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil
	}
	if st := lockOf(n); st.State != StateReady {
		return []string{st.Group}, nil
	}
	return nil, nil
}

// stripNode is the cache's transform: it keeps only what the lock reads (metadata
// without managed fields and foreign annotations, spec, the Ready condition, node
// info and addresses), so that memory stays small in large clusters.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone
	}
	n.ManagedFields = nil
	for k := range n.Annotations {
		if !strings.HasPrefix(k, "rebootmanager/") {
			delete(n.Annotations, k)
		}
	}
	var ready []corev1.NodeCondition
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = append(ready, c)
		}
	}
	n.Status = corev1.NodeStatus{
		Conditions: ready,
		Addresses:  n.Status.Addresses,
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: n.Status.NodeInfo.MachineID,
			BootID:    n.Status.NodeInfo.BootID,
		},
	}
	return n, nil
}

// resolve maps a Zincati ID to exactly one node.
func (l *Lock) resolve(id string) (*corev1.Node, error) {
	if !l.HasSynced() {
		return nil, apiError("node cache", fmt.Errorf("not synced yet"))
	}
	ns := l.ids.get(id)
	switch len(ns) {
	case 0:
		return nil, fmt.Errorf("%w: %s is derived from no Node's machine ID, and no Node has it as its %s annotation (needed with Zincati's identity.node_uuid; docs/zincati.md)",
			fleetlock.ErrUnknownNode, id, AnnotationZincatiID)
	case 1:
		return ns[0], nil
	}
	names := make([]string, len(ns))
	for i, n := range ns {
		names[i] = n.Name
	}
	sort.Strings(names)
	return nil, fmt.Errorf("several nodes have Zincati ID %s: %s: %w", id, strings.Join(names, ", "), fleetlock.ErrAmbiguousNode)
}

package lock

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// byZincatiID indexes the node cache by the ID Zincati sends.
const byZincatiID = "zincatiID"

// zincatiIDs is the cache index function: a node's Zincati ID is its override
// annotation when set, else derived from the machine ID kubelet reports. A node
// without either is not indexed, so it can never be granted a reboot.
func zincatiIDs(obj any) ([]string, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil
	}
	if id := normalizeID(n.Annotations[AnnotationZincatiID]); id != "" {
		return []string{id}, nil
	}
	id, err := fleetlock.ZincatiID(n.Status.NodeInfo.MachineID)
	if err != nil {
		return nil, nil //nolint:nilerr // a node without a usable machine ID is simply not indexed
	}
	return []string{id}, nil
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

// resolve maps a Zincati ID to the name of exactly one node.
func (l *Lock) resolve(id string) (*corev1.Node, error) {
	if !l.nodes.HasSynced() {
		return nil, apiError("node cache", fmt.Errorf("not synced yet"))
	}
	objs, err := l.nodes.GetIndexer().ByIndex(byZincatiID, id)
	if err != nil {
		return nil, err
	}
	switch len(objs) {
	case 0:
		return nil, fmt.Errorf("no node has Zincati ID %s: %w", id, fleetlock.ErrUnknownNode)
	case 1:
		return objs[0].(*corev1.Node), nil
	}
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.(*corev1.Node).Name
	}
	sort.Strings(names)
	return nil, fmt.Errorf("several nodes have Zincati ID %s: %s: %w", id, strings.Join(names, ", "), fleetlock.ErrAmbiguousNode)
}

package lock

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Holder is a node that claims or holds the lock, as the cache shows it.
type Holder struct {
	Node  string
	Group string
	State State     // Claiming or Rebooting
	Since time.Time // when the state began
	// ReservedUntil is the deadline of the reservation the slot is held under
	// (AnnotationReservedUntil): zero unless the slot was reserved for the node while
	// it had no request open, and its pre-reboot has not come yet.
	ReservedUntil time.Time
}

// Holders returns the nodes that claim or hold the lock, from the cache. The status
// page and the metrics are built from it.
func (l *Lock) Holders() []Holder {
	var hs []Holder
	for _, obj := range l.nodes.GetIndexer().List() {
		if h, ok := HolderOf(obj.(*corev1.Node)); ok {
			hs = append(hs, h)
		}
	}
	return hs
}

// HolderOf reads the lock state recorded on a node: ok is false when the node neither
// claims nor holds.
func HolderOf(n *corev1.Node) (h Holder, ok bool) {
	st := lockOf(n)
	until, _ := ReservedUntil(n)
	return Holder{Node: n.Name, Group: st.Group, State: st.State, Since: st.Since, ReservedUntil: until}, st.State != StateReady
}

package lock

import (
	"context"
	"errors"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// A machine may come back from its reboot under a new Node name (Talos, k3os): its
// machine ID, hence its Zincati ID, is the same, while the old Node stays NotReady and
// holding. Its steady-state matches two Nodes. When exactly one of them is Ready and
// holds nothing, and every other one holds a slot and is NotReady, the machine is
// back: the old Nodes' slots are freed and steady-state succeeds.

// releaseReRegistered frees the slots of the old Nodes of a machine that came back
// under a new name, deciding on fresh reads; it reports whether it did. It changes
// nothing unless the nodes matching id are exactly that.
func (l *Lock) releaseReRegistered(ctx context.Context, id string, log *slog.Logger) (bool, error) {
	var olds []string
	var back string
	for _, n := range l.ids.get(id) {
		st := lockOf(n)
		switch {
		case st.holding() && !NodeReady(n):
			olds = append(olds, n.Name)
		case st.State == StateReady && NodeReady(n) && back == "":
			back = n.Name
		default:
			return false, nil
		}
	}
	if back == "" || len(olds) == 0 {
		return false, nil
	}
	n, err := l.get(ctx, back)
	if err != nil || lockOf(n).State != StateReady || !NodeReady(n) {
		return false, err
	}
	released := false
	for _, name := range olds {
		old, err := l.get(ctx, name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return released, err
		}
		if !lockOf(old).holding() || NodeReady(old) {
			continue
		}
		olog := log.With("node", name, "newNode", back)
		err = l.release(ctx, old, olog, releaseReRegistered)
		if errors.Is(err, ErrNotHolder) {
			continue
		}
		if err != nil {
			return released, err
		}
		released = true
		l.event(name, corev1.EventTypeNormal, ReasonMachineReRegistered, "Release",
			"the machine came back from its reboot as Node "+back+" (same machine ID): this Node's slot is released")
	}
	return released, nil
}

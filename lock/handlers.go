package lock

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// The node cache's event handlers: they keep the ID map and wake the waits a
// change concerns.

func (l *Lock) nodeAdded(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	l.ids.update(nil, n)
	l.nodeChanged.fire(n.Name) // a Node of this name again (awaitDrain, awaitBack)
	if st := lockOf(n); st.State != StateReady {
		l.wakeGroup(st.Group)
		l.changed.fire()
	}
}

func (l *Lock) nodeUpdated(oldObj, newObj any) {
	o, n := oldObj.(*corev1.Node), newObj.(*corev1.Node)
	l.ids.update(o, n)
	was, is := lockOf(o), lockOf(n)
	if was.holding() && !is.holding() {
		l.drainer.Forget(n.Name) // released, by us or by someone else
	}
	if was != is {
		// a claim, hold or release: only the waiters of its group(s) may care
		l.wakeGroup(is.Group)
		if was.Group != is.Group {
			l.wakeGroup(was.Group)
		}
	}
	if was != is || NodeReady(o) != NodeReady(n) || o.Status.NodeInfo.BootID != n.Status.NodeInfo.BootID ||
		is.holding() && o.Spec.Unschedulable != n.Spec.Unschedulable {
		// its lock changed, it went (Not)Ready or rebooted (awaitBack), or as a
		// holder it was uncordoned (awaitDrain)
		l.nodeChanged.fire(n.Name)
		l.changed.fire()
	}
}

func (l *Lock) nodeDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if n, ok := obj.(*corev1.Node); ok {
		l.ids.update(n, nil)
		l.drainer.Forget(n.Name)
		l.refusedMu.Lock()
		delete(l.lastRefusal, n.Name)
		l.refusedMu.Unlock()
		l.nodeChanged.fire(n.Name)
		if st := lockOf(n); st.State != StateReady {
			l.wakeGroup(st.Group)
		}
		l.changed.fire()
	}
}

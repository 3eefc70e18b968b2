package fleetsim

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/lock"
)

// grant is one hold of a slot as the checker saw it begin: the Node object and the
// promotion, and the boot ID recorded with it.
type grant struct {
	uid    types.UID
	since  string
	bootID string
}

// holdBegins records the grant n begins to hold, and starts what the unkind modes do
// to a draining node. c.mu is held.
func (c *checker) holdBegins(n *corev1.Node) {
	c.grants[n.Name] = grant{uid: n.UID, since: n.Annotations[lock.AnnotationSince], bootID: n.Annotations[lock.AnnotationBootID]}
	sn := c.f.node(n.Name)
	if sn == nil {
		return
	}
	sn.mark(&sn.locked)
	c.f.emit(sn, PhaseDraining, "holds a slot; draining")
	ctx := c.ctx
	if c.f.opts.Unkind.TolerantPods {
		go c.f.addTolerantPod(ctx, n.Name)
	}
	if sn.recreate && sn.recreated.CompareAndSwap(false, true) {
		go c.f.recreate(ctx, sn)
	}
}

// holdEnds checks that a slot is released only on evidence of this reboot: a boot ID
// other than the grant's. c.mu is held.
func (c *checker) holdEnds(n *corev1.Node) {
	g, ok := c.grants[n.Name]
	if !ok || g.uid != n.UID || g.bootID == "" {
		return
	}
	sn := c.f.node(n.Name)
	if sn != nil && sn.reRegister != "" {
		return // its machine came back under another name: its old Node never will
	}
	if sn != nil && sn.restarted.Load() {
		// Its Zincati restarted (RestartWhileWaiting) and sent steady-state without
		// rebooting: the lock releases such a hold once the kubelet shows the machine
		// alive with the old boot ID (RebootNotObserved). The release is right.
		return
	}
	if n.Status.NodeInfo.BootID == g.bootID {
		c.violations = append(c.violations, Violation{time.Now(),
			n.Name + ": slot released before a new boot ID (still " + g.bootID + ")"})
	}
}

// finalReRegistered checks a node whose machine came back under a new name: told to
// reboot once, its old Node no longer holds, its new Node is Ready and schedulable.
func (c *checker) finalReRegistered(ctx context.Context, n *simNode, reboots int) {
	if reboots != 1 {
		c.violatef("%s: told to reboot %d times, want once", n.name, reboots)
	}
	if old, err := c.f.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{}); err == nil {
		if s := old.Annotations[lock.AnnotationStatus]; s == string(lock.StateRebooting) {
			c.violatef("%s: came back as %s, its old Node still holds a slot", n.name, n.reRegister)
		}
	}
	node, err := c.f.client.CoreV1().Nodes().Get(ctx, n.reRegister, metav1.GetOptions{})
	switch {
	case err != nil:
		c.violatef("%s: came back as %s: %v", n.name, n.reRegister, err)
	case !lock.NodeReady(node) || node.Spec.Unschedulable:
		c.violatef("%s: came back as %s, not Ready and schedulable", n.name, n.reRegister)
	}
}

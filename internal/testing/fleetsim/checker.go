package fleetsim

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/reboot-manager/reboot-manager/lock"
)

// Violation is one broken promise, seen by the checker.
type Violation struct {
	Time time.Time
	What string
}

func (v Violation) String() string { return v.Time.Format("15:04:05.000") + " " + v.What }

// checker follows the fleet's nodes and budgets through watches and records
// violations.
type checker struct {
	f      *Fleet
	ctx    context.Context // ends with the checker
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu         sync.Mutex
	holding    map[string]string // node → group, for nodes holding the lock
	grants     map[string]grant  // node → the grant it holds, from the watch
	bootIDs    map[string]string
	bootIDSeen map[string]int // boot ID changes per node
	violations []Violation
	mostHeld   map[string]int // group → most nodes holding at once
	order      orderTrack
}

func startChecker(ctx context.Context, f *Fleet) (*checker, error) {
	ctx, cancel := context.WithCancel(ctx)
	c := &checker{
		f: f, ctx: ctx, cancel: cancel,
		holding: map[string]string{}, grants: map[string]grant{}, bootIDs: map[string]string{}, bootIDSeen: map[string]int{},
		mostHeld: map[string]int{}, order: newOrderTrack(),
	}
	selector := labelFleet + "=" + f.opts.Name
	nodes := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return f.client.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return f.client.CoreV1().Nodes().Watch(ctx, o)
		},
	}
	pdbs := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return f.client.PolicyV1().PodDisruptionBudgets(f.opts.Namespace).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return f.client.PolicyV1().PodDisruptionBudgets(f.opts.Namespace).Watch(ctx, o)
		},
	}
	for _, w := range []struct {
		lw     *cache.ListWatch
		handle func(watch.Event)
	}{{nodes, c.nodeEvent}, {pdbs, c.budgetEvent}} {
		rw, err := c.follow(ctx, w.lw, w.handle)
		if err != nil {
			cancel()
			return nil, err
		}
		c.done.Go(func() {
			for {
				for ev := range rw.ResultChan() {
					w.handle(ev)
				}
				rw.Stop()
				// The watch ended: the context, or a resourceVersion the API server no
				// longer has (410 Gone, after it restarted). List again and go on:
				// every object is handed over as it is now, so a node that rebooted
				// meanwhile shows its new boot ID.
				for ctx.Err() == nil {
					next, err := c.follow(ctx, w.lw, w.handle)
					if err == nil {
						rw = next
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
				if ctx.Err() != nil {
					return
				}
			}
		})
	}
	return c, nil
}

// follow lists, hands every object to handle as an Added event, and returns a watch
// from the list's resourceVersion that survives API server restarts without a gap.
func (c *checker) follow(ctx context.Context, lw *cache.ListWatch, handle func(watch.Event)) (*watchtools.RetryWatcher, error) {
	list, err := lw.ListWithContextFunc(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	for _, obj := range items {
		handle(watch.Event{Type: watch.Added, Object: obj})
	}
	rv, err := meta.NewAccessor().ResourceVersion(list)
	if err != nil {
		return nil, err
	}
	return watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
}

func (c *checker) stop() {
	c.cancel()
	c.done.Wait()
}

func (c *checker) violatef(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violations = append(c.violations, Violation{Time: time.Now(), What: fmt.Sprintf(format, args...)})
}

// nodeEvent counts the holders of each group at every change, in the order the API
// server applied the changes.
func (c *checker) nodeEvent(ev watch.Event) {
	n, ok := ev.Object.(*corev1.Node)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	holds := ev.Type != watch.Deleted && n.Annotations[lock.AnnotationStatus] == string(lock.StateRebooting)
	group := n.Annotations[lock.AnnotationGroup]
	if holds && c.holding[n.Name] == "" {
		c.holdBegins(n)
		c.orderCheck(n)
	}
	c.orderNote(ev, n)
	if !holds && c.holding[n.Name] != "" && ev.Type != watch.Deleted {
		c.holdEnds(n)
	}
	if holds {
		c.holding[n.Name] = group
	} else {
		delete(c.holding, n.Name)
		delete(c.grants, n.Name)
	}
	if ev.Type == watch.Deleted {
		delete(c.bootIDs, n.Name) // a Node created again under the name has its own
	}
	count := 0
	for _, g := range c.holding {
		if g == group {
			count++
		}
	}
	c.mostHeld[group] = max(c.mostHeld[group], count)
	if slots := c.f.slots(group); holds && count > slots {
		c.violations = append(c.violations, Violation{time.Now(), fmt.Sprintf("group %s: %d nodes hold the lock, %d slots", group, count, slots)})
	}
	if id := n.Status.NodeInfo.BootID; id != "" && ev.Type != watch.Deleted {
		if old, seen := c.bootIDs[n.Name]; seen && old != id {
			c.bootIDSeen[n.Name]++
		}
		c.bootIDs[n.Name] = id
	}
}

// budgetEvent checks that no budget has fewer healthy pods than it requires.
func (c *checker) budgetEvent(ev watch.Event) {
	pdb, ok := ev.Object.(*policyv1.PodDisruptionBudget)
	if !ok || ev.Type == watch.Deleted || pdb.Status.ObservedGeneration != pdb.Generation {
		return
	}
	if pdb.Status.CurrentHealthy < pdb.Status.DesiredHealthy {
		c.violatef("PodDisruptionBudget %s: %d healthy pods, %d required", pdb.Name, pdb.Status.CurrentHealthy, pdb.Status.DesiredHealthy)
	}
}

// granted checks a node the moment its Zincati was told to reboot: it holds the lock,
// it is cordoned, and no pod that a drain must move is left on it.
func (c *checker) granted(ctx context.Context, n *simNode) {
	node, err := c.f.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
	if err != nil {
		c.violatef("%s: cannot check the grant: %v", n.name, err)
		return
	}
	if node.Annotations[lock.AnnotationStatus] != string(lock.StateRebooting) {
		c.violatef("%s: told to reboot without holding the lock", n.name)
	}
	c.mu.Lock()
	g, known := c.grants[n.name]
	c.mu.Unlock()
	if known && (g.uid != node.UID || g.since != node.Annotations[lock.AnnotationSince]) {
		c.violatef("%s: told to reboot for another grant: holds uid %s since %s, the grant seen was uid %s since %s",
			n.name, node.UID, node.Annotations[lock.AnnotationSince], g.uid, g.since)
	}
	if !node.Spec.Unschedulable {
		c.violatef("%s: told to reboot while schedulable", n.name)
	}
	pods, err := c.f.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
	if err != nil {
		c.violatef("%s: cannot check the grant: %v", n.name, err)
		return
	}
	var left []string
	for _, p := range pods.Items {
		if mustLeave(&p) {
			left = append(left, p.Namespace+"/"+p.Name)
		}
	}
	if len(left) > 0 {
		sort.Strings(left)
		c.violatef("%s: told to reboot with pods left to evict: %v", n.name, left)
	}
}

// mustLeave reports whether a drain must move the pod: everything but mirror pods,
// DaemonSet pods and finished pods.
func mustLeave(p *corev1.Pod) bool {
	if _, mirror := p.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
		return false
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	if ref := metav1.GetControllerOf(p); ref != nil && ref.Kind == "DaemonSet" {
		return false
	}
	return true
}

// final checks what can only be checked at the end: every node rebooted exactly once
// and nodes cordoned before the rollout are cordoned still.
func (c *checker) final(ctx context.Context) {
	for _, n := range c.f.nodes {
		n.mu.Lock()
		reboots := n.reboots
		n.mu.Unlock()
		c.mu.Lock()
		seen := c.bootIDSeen[n.name]
		c.mu.Unlock()
		node, err := c.f.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if n.reRegister != "" {
			c.finalReRegistered(ctx, n, reboots)
			continue
		}
		if n.fails {
			if reboots != 1 || !apierrors.IsNotFound(err) {
				c.violatef("%s: never came back; told to reboot %d times, want once, and its Node deleted (get: %v)", n.name, reboots, err)
			}
			continue
		}
		if reboots != 1 || seen != 1 {
			c.violatef("%s: rebooted %d times (boot ID changed %d times), want exactly once", n.name, reboots, seen)
		}
		if err != nil {
			c.violatef("%s: %v", n.name, err)
			continue
		}
		if n.cordoned && !node.Spec.Unschedulable {
			c.violatef("%s: cordoned by the operator before the rollout, uncordoned after it", n.name)
		}
		if !n.cordoned && node.Spec.Unschedulable {
			c.violatef("%s: left cordoned after the rollout", n.name)
		}
		if s := node.Annotations[lock.AnnotationStatus]; s != "" && s != string(lock.StateReady) {
			c.violatef("%s: lock state %s after the rollout", n.name, s)
		}
	}
}

func (f *Fleet) node(name string) *simNode {
	for _, n := range f.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

func (f *Fleet) slots(group string) int {
	for _, g := range f.opts.Groups {
		if g.Name == group {
			return g.Slots
		}
	}
	return 0
}

package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// Group is one FleetLock group of the fleet.
type Group struct {
	// Name is the group Zincati sends; it also names the group's nodes, so keep it a
	// lowercase DNS label.
	Name string
	// Nodes is how many nodes the group has.
	Nodes int
	// Slots is how many of them reboot-manager lets reboot at once: it must match
	// reboot-manager's configuration, for the checker holds it to that.
	Slots int
	// After are the groups it goes after (the policy's after): the checker holds the
	// rollout to it, so it must match reboot-manager's configuration too.
	After []string
}

// Options describe a fleet and its rollout. The zero value works.
type Options struct {
	// Name prefixes the fleet's nodes and labels them. Default "fleet".
	Name string
	// Namespace holds the fleet's workloads; it must exist. Default "default".
	Namespace string
	// Groups are the fleet's groups. Default: one group "default" of 4 nodes, 1 slot.
	Groups []Group
	// Poll is how long a simulated Zincati waits before asking again after a non-2xx
	// answer (Zincati: 300 to 330 s). Default 2s.
	Poll time.Duration
	// Jitter is the random share added to each Poll (Zincati: 0.1). Default 0.1.
	Jitter float64
	// Downtime is how long a reboot keeps a node NotReady. Default 1s.
	Downtime time.Duration
	// TerminationGracePeriod is the terminationGracePeriodSeconds of the groups'
	// Deployment pods, in whole seconds, rounded up. Default 1s. An evicted pod is gone
	// after the shorter of it and the simulated kubelet's TerminationDelay, so together
	// they set how long a drain takes.
	TerminationGracePeriod time.Duration
	// Endpoints are reboot-manager base URLs; requests go to them in turn, as through
	// a Service in front of several replicas. Roll requires them.
	Endpoints []string
	// PreCordoned is how many nodes (the last ones of each group) an operator cordoned
	// before the rollout; they must still be cordoned after it. Default 0.
	PreCordoned int
	// ProviderID, if set, gives each node its spec.providerID.
	ProviderID func(node string) string
	// NeverReturns, if set, names the nodes that do not come back from their reboot:
	// they stay NotReady, their Zincati silent, until something deletes their Node (a
	// replacement), which ends their part of the rollout.
	NeverReturns func(node string) bool
	// Unkind are the modes in which the fleet behaves as real clusters do and kind
	// simulators do not (unkind.go).
	Unkind Unkind
	// StageWithin spreads the moment each node stages its update (and starts asking
	// to reboot) at random over this long, as Zincati's update checks do (every 300 s
	// in a real fleet). Default 0: every node stages at once.
	StageWithin time.Duration
	// RestartWhileWaiting, if above 0, restarts each node's Zincati once while it waits
	// for a slot: its first pre-reboot request still open after a random time in
	// (0, RestartWhileWaiting] is dropped, the node sends steady-state (as Zincati does
	// at every start) and asks to reboot again. Default 0: no restarts.
	RestartWhileWaiting time.Duration
	// OnEvent, if set, receives every step of every node, for live progress.
	OnEvent func(Event)
	// Log, if set, receives the simulator's own messages.
	Log func(format string, args ...any)
}

// Phase is where a node stands in the rollout.
type Phase string

// The phases, in order.
const (
	PhaseWaiting   Phase = "waiting"   // its pre-reboot is refused or held: no slot yet
	PhaseDraining  Phase = "draining"  // it holds a slot; its pods are leaving
	PhaseRebooting Phase = "rebooting" // told to reboot; NotReady
	PhaseBack      Phase = "back"      // Ready again, asking steady-state
	PhaseDone      Phase = "done"      // steady-state answered 2xx: slot released
)

// Event is one step of one node.
type Event struct {
	Time   time.Time
	Node   string
	Group  string
	Phase  Phase
	Detail string
}

// Fleet is a simulated fleet in a cluster.
type Fleet struct {
	client  kubernetes.Interface
	kubelet *simkubelet.Kubelet
	opts    Options
	nodes   []*simNode
	next    atomic.Uint64 // round robin over Endpoints
}

// simNode is one node and its Zincati.
type simNode struct {
	name, group string
	zincatiID   string
	machineID   string
	labels      map[string]string
	providerID  string
	cordoned    bool   // by the operator, before the rollout
	fails       bool   // never comes back from its reboot
	recreate    bool   // its Node is deleted and created again while it drains
	reRegister  string // the name it comes back under, if another
	recreated   atomic.Bool

	mu                                     sync.Mutex
	asked, locked, allowed, back, released time.Time
	requests                               int
	reboots                                int
	restarts                               int         // Zincati restarts while waiting
	restarted                              atomic.Bool // its Zincati sent steady-state without a reboot
}

// New creates the fleet's nodes and workloads and waits until the workloads are ready.
func New(ctx context.Context, client kubernetes.Interface, kubelet *simkubelet.Kubelet, opts Options) (*Fleet, error) {
	if opts.Name == "" {
		opts.Name = "fleet"
	}
	if opts.Namespace == "" {
		opts.Namespace = metav1.NamespaceDefault
	}
	if len(opts.Groups) == 0 {
		opts.Groups = []Group{{Name: "default", Nodes: 4, Slots: 1}}
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Jitter <= 0 {
		opts.Jitter = 0.1
	}
	if opts.Downtime <= 0 {
		opts.Downtime = time.Second
	}
	if opts.TerminationGracePeriod <= 0 {
		opts.TerminationGracePeriod = time.Second
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	f := &Fleet{client: client, kubelet: kubelet, opts: opts}
	for _, g := range opts.Groups {
		for i := range g.Nodes {
			machineID := simkubelet.RandomID()
			id, err := fleetlock.ZincatiID(machineID)
			if err != nil {
				return nil, err
			}
			n := &simNode{
				name:      fmt.Sprintf("%s-%s-%02d", opts.Name, g.Name, i),
				group:     g.Name,
				zincatiID: id,
				machineID: machineID,
				labels:    map[string]string{labelFleet: opts.Name, labelGroup: g.Name},
				cordoned:  i >= g.Nodes-opts.PreCordoned,
			}
			n.fails = opts.NeverReturns != nil && opts.NeverReturns(n.name)
			opts.Unkind.mark(n)
			if opts.ProviderID != nil {
				n.providerID = opts.ProviderID(n.name)
			}
			_, err = kubelet.AddNode(ctx, n.name, simkubelet.NodeOptions{
				MachineID:     machineID,
				Unschedulable: n.cordoned,
				Labels:        n.labels,
				ProviderID:    n.providerID,
			})
			if err != nil {
				return nil, fmt.Errorf("create node %s: %w", n.name, err)
			}
			f.nodes = append(f.nodes, n)
		}
		if err := f.createWorkload(ctx, g); err != nil {
			return nil, err
		}
	}
	if err := f.createDaemonSet(ctx); err != nil {
		return nil, err
	}
	return f, f.awaitWorkloads(ctx)
}

const (
	labelFleet = "fleetsim/fleet"
	labelGroup = "fleetsim/group"
)

// createWorkload runs, on the group's schedulable nodes, a Deployment spread one pod per
// node, under a PodDisruptionBudget that allows one pod down.
func (f *Fleet) createWorkload(ctx context.Context, g Group) error {
	replicas := int32(max(2, g.Nodes-f.opts.PreCordoned))
	labels := map[string]string{"app": "web-" + g.Name}
	_, err := f.client.AppsV1().Deployments(f.opts.Namespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: f.opts.Name + "-web-" + g.Name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Finalizers: f.opts.Unkind.finalizers()},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{labelFleet: f.opts.Name, labelGroup: g.Name},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: new(int64((f.opts.TerminationGracePeriod + time.Second - 1) / time.Second)),
					Containers:                    []corev1.Container{{Name: "web", Image: "registry.invalid/web:1"}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create deployment: %w", err)
	}
	maxUnavailable := intstr.FromInt32(1)
	_, err = f.client.PolicyV1().PodDisruptionBudgets(f.opts.Namespace).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: f.opts.Name + "-web-" + g.Name},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &maxUnavailable,
			Selector:       &metav1.LabelSelector{MatchLabels: labels},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pdb: %w", err)
	}
	return nil
}

// createDaemonSet runs an agent on every node of the fleet: a drain leaves it alone.
func (f *Fleet) createDaemonSet(ctx context.Context) error {
	labels := map[string]string{"app": f.opts.Name + "-agent"}
	_, err := f.client.AppsV1().DaemonSets(f.opts.Namespace).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: f.opts.Name + "-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{labelFleet: f.opts.Name},
					Containers:   []corev1.Container{{Name: "agent", Image: "registry.invalid/agent:1"}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create daemonset: %w", err)
	}
	return nil
}

// awaitWorkloads waits until every Deployment of the fleet has all its replicas ready
// and every budget has seen them.
func (f *Fleet) awaitWorkloads(ctx context.Context) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, g := range f.opts.Groups {
			name := f.opts.Name + "-web-" + g.Name
			pdb, err := f.client.PolicyV1().PodDisruptionBudgets(f.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			d, err := f.client.AppsV1().Deployments(f.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if d.Spec.Replicas == nil || d.Status.ReadyReplicas != *d.Spec.Replicas ||
				pdb.Status.ObservedGeneration != pdb.Generation || pdb.Status.CurrentHealthy != *d.Spec.Replicas {
				return false, nil
			}
		}
		return true, nil
	})
}

// Roll stages an update on every node at once and runs every node's Zincati until the
// whole fleet has rebooted and released its slots, or ctx ends. The report holds the
// timeline and every violation the checker saw.
func (f *Fleet) Roll(ctx context.Context) (*Report, error) {
	if len(f.opts.Endpoints) == 0 {
		return nil, errors.New("fleetsim: no reboot-manager endpoint")
	}
	chk, err := startChecker(ctx, f)
	if err != nil {
		return nil, err
	}
	stopUnkind := f.startUnkind(ctx)
	defer stopUnkind()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(f.nodes))
	for _, n := range f.nodes {
		wg.Go(func() {
			if err := f.zincati(ctx, n, chk); err != nil {
				errs <- fmt.Errorf("%s: %w", n.name, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	end := time.Now()
	chk.stop()
	chk.final(ctx)
	rep := f.report(start, end, chk)
	return rep, errors.Join(collect(errs)...)
}

// zincati plays one node's Zincati through one update.
func (f *Fleet) zincati(ctx context.Context, n *simNode, chk *checker) error {
	params := fleetlock.ClientParams{ID: n.zincatiID, Group: n.group}
	// Steady-state at start (Zincati does it on every start), until a 2xx.
	if err := f.untilOK(ctx, n, params, false); err != nil {
		return err
	}
	if f.opts.StageWithin > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rand.N(f.opts.StageWithin)):
		}
	}
	n.mark(&n.asked)
	f.emit(n, PhaseWaiting, "update staged; asking to reboot")
	granted := false
	if f.opts.RestartWhileWaiting > 0 {
		var err error
		if granted, err = f.restartWhileWaiting(ctx, n, params); err != nil {
			return err
		}
	}
	if !granted {
		if err := f.untilOK(ctx, n, params, true); err != nil {
			return err
		}
	}
	n.mark(&n.allowed)
	chk.granted(ctx, n)
	f.emit(n, PhaseRebooting, "reboot allowed")
	n.mu.Lock()
	n.reboots++
	n.mu.Unlock()
	if n.fails {
		return f.neverReturn(ctx, n)
	}
	if err := f.reboot(ctx, n, params); err != nil {
		return err
	}
	n.mark(&n.released)
	f.emit(n, PhaseDone, "slot released")
	return nil
}

// restartWhileWaiting asks to reboot until a 2xx or until a random moment in
// (0, RestartWhileWaiting], whichever comes first. At that moment the open request is
// dropped, as a Zincati restart drops it, and the node sends steady-state, as Zincati
// does at every start. A 2xx before it means the node was never kept waiting: the
// rollout goes on to its reboot.
func (f *Fleet) restartWhileWaiting(ctx context.Context, n *simNode, params fleetlock.ClientParams) (granted bool, err error) {
	rctx, cancel := context.WithTimeout(ctx, 1+rand.N(f.opts.RestartWhileWaiting))
	defer cancel()
	granted = f.untilOK(rctx, n, params, true) == nil
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if granted {
		return true, nil
	}
	n.mu.Lock()
	n.restarts++
	n.mu.Unlock()
	f.emit(n, PhaseWaiting, "Zincati restarted: request dropped")
	n.restarted.Store(true) // a hold it had is released without a reboot, rightly
	return false, f.untilOK(ctx, n, params, false)
}

// neverReturn takes the node down for good and waits until its Node is deleted.
func (f *Fleet) neverReturn(ctx context.Context, n *simNode) error {
	if err := f.kubelet.Fail(ctx, n.name); err != nil {
		return fmt.Errorf("fail: %w", err)
	}
	f.emit(n, PhaseRebooting, "never comes back")
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := f.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the node to be replaced: %w", err)
	}
	n.mark(&n.released)
	f.emit(n, PhaseDone, "replaced: its Node was deleted")
	return nil
}

// untilOK sends pre-reboot (or steady-state) until a 2xx, waiting Poll plus jitter
// after every other answer, as Zincati does.
func (f *Fleet) untilOK(ctx context.Context, n *simNode, p fleetlock.ClientParams, preReboot bool) error {
	for {
		c := fleetlock.Client{BaseURL: f.opts.Endpoints[int(f.next.Add(1))%len(f.opts.Endpoints)]}
		var resp fleetlock.Response
		var err error
		if preReboot {
			resp, err = c.PreReboot(ctx, p)
		} else {
			resp, err = c.SteadyState(ctx, p)
		}
		n.mu.Lock()
		n.requests++
		n.mu.Unlock()
		if err == nil && resp.OK() {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			f.opts.Log("%s: request failed: %v", n.name, err)
		} else if preReboot {
			f.emit(n, "", string(resp.Reply.Kind)+": "+resp.Reply.Value)
		}
		d := time.Duration(float64(f.opts.Poll) * (1 + f.opts.Jitter*rand.Float64()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

func (f *Fleet) emit(n *simNode, p Phase, detail string) {
	if f.opts.OnEvent != nil {
		f.opts.OnEvent(Event{Time: time.Now(), Node: n.name, Group: n.group, Phase: p, Detail: detail})
	}
}

func (n *simNode) mark(t *time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	*t = time.Now()
}

// Nodes returns the names of the fleet's nodes.
func (f *Fleet) Nodes() []string {
	names := make([]string, len(f.nodes))
	for i, n := range f.nodes {
		names[i] = n.name
	}
	return names
}

// ZincatiID returns the ID the Zincati of node sends, or "" for a node not in the fleet.
func (f *Fleet) ZincatiID(node string) string {
	if n := f.node(node); n != nil {
		return n.zincatiID
	}
	return ""
}

// Delete removes the fleet's nodes (its workloads go with their namespace, once the
// finalizers of PodFinalizers are gone).
func (f *Fleet) Delete(ctx context.Context) {
	f.dropFinalizers(ctx, 0)
	for _, n := range f.nodes {
		_ = f.client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
		if n.reRegister != "" {
			_ = f.client.CoreV1().Nodes().Delete(ctx, n.reRegister, metav1.DeleteOptions{})
		}
	}
}

func collect(errs <-chan error) []error {
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return all
}

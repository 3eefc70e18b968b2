package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Drainer empties nodes of their pods in the background. The evict package's Drainer
// implements it; lock/locktest has fakes.
type Drainer interface {
	// Start starts draining node unless a drain of this Node object (its UID) is under
	// way or done, and returns its progress without blocking. A drain of another UID
	// of the same name is stopped and replaced by a fresh one.
	Start(node *corev1.Node) evict.Progress
	// Forget stops any drain of the node named node and drops what is known of it.
	Forget(node string)
	// Remaining lists, with a fresh read from the API server (not a cache), the pods
	// bound to node that a drain must move, with the drain's own filters. If there
	// are any, the drain is restarted to evict them.
	Remaining(ctx context.Context, node *corev1.Node) ([]types.NamespacedName, error)
	// GaveUp reports whether the last drain of node gave up (the Release failure
	// policy) and nothing has changed since that would let a new one finish: such a
	// node is refused before it is cordoned again, with the drain's blocks as the
	// reason. An error comes with true: it fails closed.
	GaveUp(ctx context.Context, node *corev1.Node) (evict.Progress, bool, error)
}

var _ Drainer = (*evict.Drainer)(nil)

// maxConflicts bounds how often one request re-reads a node after a 409 Conflict.
const maxConflicts = 20

// Lock is the reboot lock, kept in Node annotations. It implements fleetlock.Locker.
type Lock struct {
	client  kubernetes.Interface
	drainer Drainer
	opts    Options
	log     *slog.Logger
	factory informers.SharedInformerFactory
	nodes   cache.SharedIndexInformer
	// ids resolves Zincati IDs, kept by the event handlers; synced is set once they
	// have seen the cache's initial list (HasSynced).
	ids     idMap
	handled cache.ResourceEventHandlerRegistration
	synced  atomic.Bool
	// nodeChanged fires, by node name, when a node's lock state, readiness, boot ID or
	// (while it holds) cordon changes, or it is added or deleted: the waits about one
	// node (awaitDrain, awaitBack).
	nodeChanged signals
	// groupChanged fires, by group, when a node's claim or hold of the group changes
	// (wakeGroup): the claimants waiting for later claimants to withdraw.
	groupChanged signals
	// changed fires on every change that fires nodeChanged or wakeGroup, any node,
	// any group: for the one loop per replica that looks at every group
	// (reserveLoop), never for a request's wait.
	changed signal
	// contenders counts this replica's requests that seek a slot, by group and node
	// name: a waiter lets those before it in name order try first (awaitFreeSlot).
	// slotWaiters are the requests in awaitFreeSlot, by group (wakeGroup).
	contendersMu sync.Mutex
	contenders   map[string]map[string]int
	slotWaiters  map[string]map[*slotWaiter]struct{}
	// stopping is closed when Start's context ends: waiting requests answer at once.
	stopping <-chan struct{}
	// leasesForbidden is set once reading a node Lease was refused (logged once).
	leasesForbidden atomic.Bool
	// apiErr is the last API server health probe's error, nil while it answers.
	apiErr atomic.Pointer[error]
	// unmatched counts requests whose ID matched no node or several, by endpoint.
	unmatched *prometheus.CounterVec
	// refusals counts pre-reboot requests the policy refused, by reason.
	refusals *prometheus.CounterVec
	// releases counts steady-state releases, by group and whether the reboot was seen.
	releases *prometheus.CounterVec
	// reservations counts reservations by group and outcome (reserve.go).
	reservations *prometheus.CounterVec
	// backSince is when the stale-holder loop first saw each grant back (node UID and
	// promotion), on this replica's clock; only that loop uses it.
	backSince map[types.UID]time.Time
	// lastRefusal is the refusal last posted as an Event, by node.
	refusedMu   sync.Mutex
	lastRefusal map[string]refusalPosted
}

var (
	_ fleetlock.Locker            = (*Lock)(nil)
	_ fleetlock.QuickSteadyStater = (*Lock)(nil)
)

// New returns a Lock. Call Start before use.
func New(client kubernetes.Interface, drainer Drainer, opts Options) (*Lock, error) {
	opts = opts.withDefaults()
	l := &Lock{
		client: client, drainer: drainer, opts: opts, log: opts.Logger,
		contenders:   map[string]map[string]int{},
		slotWaiters:  map[string]map[*slotWaiter]struct{}{},
		stopping:     make(chan struct{}),
		unmatched:    newUnmatchedCounter(),
		refusals:     newRefusalsCounter(),
		releases:     newReleasesCounter(),
		reservations: newReservationsCounter(),
		lastRefusal:  map[string]refusalPosted{},
	}
	l.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripNode))
	l.nodes = l.factory.Core().V1().Nodes().Informer()
	if opts.WatchErrors != nil {
		if err := opts.WatchErrors.Watch("the node cache", l.nodes); err != nil {
			return nil, err
		}
	}
	if err := l.nodes.AddIndexers(cache.Indexers{byGroup: lockGroup, byMember: memberGroup, byWaiting: waitingGroup, byReleased: releasedGroup}); err != nil {
		return nil, err
	}
	var err error
	l.handled, err = l.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    l.nodeAdded,
		UpdateFunc: l.nodeUpdated,
		DeleteFunc: l.nodeDeleted,
	})
	return l, err
}

// Start starts the node cache and waits until it has synced, then probes the API
// server's health and releases stale holders in the background. Those run until ctx
// ends; Start itself returns once the cache has synced.
func (l *Lock) Start(ctx context.Context) error {
	l.stopping = ctx.Done()
	l.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), l.HasSynced) {
		return fmt.Errorf("node cache did not sync: %w", ctx.Err())
	}
	go l.probe(ctx)
	go l.staleLoop(ctx)
	go l.resumeLoop(ctx)
	if l.opts.ReservationTimeout > 0 {
		go l.reserveLoop(ctx)
	}
	return nil
}

// PreReboot asks for the reboot lock for the node Zincati identifies with p.ID. It
// returns nil only when the node holds the lock and is drained: the node may reboot.
// Otherwise it waits up to Options.Wait for a slot and for the drain, then returns why
// not yet (*HeldError, *DrainError, *APIError, *Refusal, or an unknown or ambiguous
// node).
func (l *Lock) PreReboot(ctx context.Context, p fleetlock.ClientParams) error {
	node, err := l.resolve(p.ID)
	if err != nil {
		l.countUnmatched("pre-reboot", err)
		return err
	}
	a := l.newAcquisition(node.Name, p)
	err = a.run(ctx, node)
	l.noteOutcome(node.Name, p.Group, err)
	return err
}

// newAcquisition returns the acquisition of a slot for node, on behalf of one request.
func (l *Lock) newAcquisition(node string, p fleetlock.ClientParams) *acquisition {
	now := time.Now() // deadlines of this process, not times written on nodes
	return &acquisition{
		lock:       l,
		name:       node,
		group:      p.Group,
		log:        l.log.With("node", node, "zincatiID", p.ID, "group", p.Group),
		expires:    now.Add(l.opts.Wait - rand.N(l.opts.Wait/4+1)),
		tieExpires: now.Add(max(l.opts.Wait, tieWait)),
	}
}

// SteadyStateQuick answers steady-state from the node cache when that is the whole
// answer, as SteadyState would: not released for a node that holds nothing or an
// unknown ID, the API server's or the cache's unavailability as an *APIError. ok is
// false when SteadyState has work to do (a holder, an ID of several nodes).
func (l *Lock) SteadyStateQuick(_ context.Context, p fleetlock.ClientParams) (released, ok bool, err error) {
	if err := l.apiDown(); err != nil {
		return false, true, err
	}
	node, err := l.resolve(p.ID)
	switch {
	case errors.Is(err, fleetlock.ErrAmbiguousNode):
		return false, false, nil // perhaps a machine back under a new name
	case err != nil:
		l.countUnmatched("steady-state", err)
		if errors.Is(err, fleetlock.ErrUnknownNode) {
			return false, true, nil
		}
		return false, true, err
	case node.Annotations[AnnotationStatus] != string(StateRebooting):
		return false, true, nil
	}
	return false, false, nil
}

// SteadyState releases the lock the node holds, if any, uncordoning it if we cordoned
// it. A node that holds nothing, or that no node matches, costs no API request.
func (l *Lock) SteadyState(ctx context.Context, p fleetlock.ClientParams) (bool, error) {
	if released, ok, err := l.SteadyStateQuick(ctx, p); ok {
		return released, err
	}
	if err := l.apiDown(); err != nil {
		return false, err
	}
	node, err := l.resolve(p.ID)
	l.countUnmatched("steady-state", err)
	if errors.Is(err, fleetlock.ErrUnknownNode) {
		return false, nil
	}
	if errors.Is(err, fleetlock.ErrAmbiguousNode) {
		log := l.log.With("zincatiID", p.ID, "group", p.Group)
		if released, rerr := l.releaseReRegistered(ctx, p.ID, log); released || rerr != nil {
			return released, rerr
		}
	}
	if err != nil {
		return false, err
	}
	if lockOf(node).State != StateRebooting {
		return false, nil
	}
	n, err := l.awaitBack(ctx, node)
	if errors.Is(err, ErrNotHolder) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	err = l.release(ctx, n, l.log.With("node", node.Name, "zincatiID", p.ID, "group", p.Group), releaseSteadyState)
	if errors.Is(err, ErrNotHolder) {
		return false, nil
	}
	return err == nil, err
}

func (l *Lock) patch(ctx context.Context, name string, w write) (*corev1.Node, error) {
	return patchNode(ctx, l.client, name, w)
}

// FieldManager is the field manager of reboot-manager's writes on Nodes: the Node's
// managed fields tell its cordons from others'.
const FieldManager = "reboot-manager"

func patchNode(ctx context.Context, client kubernetes.Interface, name string, w write) (*corev1.Node, error) {
	return client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, w.patch(), metav1.PatchOptions{FieldManager: FieldManager})
}

func (l *Lock) get(ctx context.Context, name string) (*corev1.Node, error) {
	return getNode(ctx, l.client, name)
}

func getNode(ctx context.Context, client kubernetes.Interface, name string) (*corev1.Node, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, apiError("get node", err)
	}
	return n, nil
}

// slots returns the group's slot count, 0 or more.
func (l *Lock) slots(group string) int { return max(l.opts.Policy.Slots(group), 0) }

package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// Drainer empties nodes of their pods in the background. The evict package's Drainer
// implements it.
type Drainer interface {
	// Start starts draining node unless a drain of it is under way or done, and
	// returns its progress without blocking.
	Start(node string) evict.Progress
	// Forget stops any drain of node and drops what is known of it.
	Forget(node string)
}

// Options configure a Lock. The zero value works.
type Options struct {
	// Slots returns how many nodes of a group may hold the lock at once. Default: 1
	// for every group. It is called on every decision, so it may change at run time.
	Slots func(group string) int
	// Wait is how long a pre-reboot request may wait for a free slot and for its drain
	// before it answers "not yet": each request waits between 3/4 of Wait and Wait, at
	// random, so that requests that began together do not all end together and leave
	// a freed slot with nobody waiting for it. Default DefaultWait; keep it well under
	// Zincati's 30-minute request timeout and under any proxy's.
	Wait time.Duration
	// StaleClaimAge is the age after which a claim nobody refreshed (its replica
	// crashed) may be removed by anyone. Default 1 minute.
	StaleClaimAge time.Duration
	// Logger receives one info line per lock state change. Default: discard.
	Logger *slog.Logger
	// Now is the clock for the times written on nodes. Default time.Now.
	Now func() time.Time
	// Gate, if set, is asked before a node that holds nothing takes a slot.
	Gate Gate
	// ReleaseWhenReady, if set and true, makes steady-state release a holder only once
	// its Node is Ready (the request is held for up to Wait, then answered
	// node_not_ready). Called on every steady-state, so it may change at run time.
	ReleaseWhenReady func() bool
	// StaleHolderAfter, if set and above 0, releases a holder that rebooted and has
	// been Ready that long without calling steady-state. Called every 15 seconds.
	StaleHolderAfter func() time.Duration
	// BeforeReboot, if set, runs before every 2xx to pre-reboot, with the node as just
	// read from the API server (it holds a slot and is drained); an error refuses the
	// reboot with api_unavailable, and Zincati asks again. The replacement of failed
	// nodes records the grant there.
	BeforeReboot func(ctx context.Context, node *corev1.Node, group string) error
	// Recorder, if set, posts Events on Nodes: refusals, reboots not observed, stale
	// holders released.
	Recorder events.EventRecorder
}

// DefaultWait is Options.Wait's default and --wait's: long enough that a group's
// queue is covered by open requests at Zincati's real timing (a request every 300 to
// 330 s; docs/performance.md measures it), short of Zincati's 30-minute request
// timeout.
const DefaultWait = 25 * time.Minute

// DefaultStaleClaimAge is Options.StaleClaimAge's default and --stale-claim-age's.
const DefaultStaleClaimAge = time.Minute

// tieWait is the least time a request waits for later claimants to withdraw, whatever
// Options.Wait says: they do so within a few API round trips.
const tieWait = 5 * time.Second

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
	changed signal
	// contenders counts this replica's requests that seek a slot, by group and node
	// name: a waiter lets those before it in name order try first (awaitFreeSlot).
	contendersMu sync.Mutex
	contenders   map[string]map[string]int
	// stopping is closed when Start's context ends: waiting requests answer at once.
	stopping <-chan struct{}
	// apiErr is the last API server health probe's error, nil while it answers.
	apiErr atomic.Pointer[error]
	// unmatched counts requests whose ID matched no node or several, by endpoint.
	unmatched *prometheus.CounterVec
	// refusals counts pre-reboot requests a Gate refused, by reason.
	refusals *prometheus.CounterVec
	// releases counts steady-state releases, by group and whether the reboot was seen.
	releases *prometheus.CounterVec
	// lastRefusal is the reason last posted as an Event, by node.
	refusedMu   sync.Mutex
	lastRefusal map[string]string
}

var _ fleetlock.Locker = (*Lock)(nil)

// New returns a Lock. Call Start before use.
func New(client kubernetes.Interface, drainer Drainer, opts Options) (*Lock, error) {
	if opts.Slots == nil {
		opts.Slots = func(string) int { return 1 }
	}
	if opts.Wait <= 0 {
		opts.Wait = DefaultWait
	}
	if opts.StaleClaimAge <= 0 {
		opts.StaleClaimAge = DefaultStaleClaimAge
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReleaseWhenReady == nil {
		opts.ReleaseWhenReady = func() bool { return false }
	}
	if opts.StaleHolderAfter == nil {
		opts.StaleHolderAfter = func() time.Duration { return 0 }
	}
	l := &Lock{
		client: client, drainer: drainer, opts: opts, log: opts.Logger, changed: newSignal(),
		contenders: map[string]map[string]int{},
		stopping:   make(chan struct{}),
		unmatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_unmatched_ids_total",
			Help: "Requests whose Zincati ID matched no node (reason unknown) or several (reason ambiguous).",
		}, []string{"endpoint", "reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_refusals_total",
			Help: "Pre-reboot requests refused by the operator's policy (window, pause, hold, gap, blockers), by reason.",
		}, []string{"reason"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_releases_total",
			Help: "Slots released by steady-state, by group and by whether the node's boot ID had changed (rebooted true or false).",
		}, []string{"group", "rebooted"}),
		lastRefusal: map[string]string{},
	}
	l.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripNode))
	l.nodes = l.factory.Core().V1().Nodes().Informer()
	if err := l.nodes.AddIndexers(cache.Indexers{byZincatiID: zincatiIDs, byGroup: lockGroup, byMember: memberGroup}); err != nil {
		return nil, err
	}
	_, err := l.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok && lockOf(n).State != StateReady {
				l.changed.fire()
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, n := oldObj.(*corev1.Node), newObj.(*corev1.Node)
			was, is := lockOf(o), lockOf(n)
			if was.holding() && !is.holding() {
				l.drainer.Forget(n.Name) // released, by us or by someone else
			}
			if was != is || NodeReady(o) != NodeReady(n) {
				l.changed.fire() // a lock changed, or a node went (Not)Ready: awaitReady
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				l.drainer.Forget(n.Name)
				l.refusedMu.Lock()
				delete(l.lastRefusal, n.Name)
				l.refusedMu.Unlock()
				l.changed.fire()
			}
		},
	})
	return l, err
}

// Start starts the node cache and waits until it has synced. The cache runs until
// ctx ends.
func (l *Lock) Start(ctx context.Context) error {
	l.stopping = ctx.Done()
	l.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), l.nodes.HasSynced) {
		return fmt.Errorf("node cache did not sync: %w", ctx.Err())
	}
	go l.probe(ctx)
	go l.staleLoop(ctx)
	return nil
}

// healthInterval is how often the API server's /readyz is probed.
const healthInterval = 2 * time.Second

// probe asks the API server's /readyz every healthInterval until ctx ends. While it
// fails, requests are refused with api_unavailable: the cache they would be answered
// from may be stale, and no write could be made anyway.
func (l *Lock) probe(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, healthInterval)
		err := l.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch was := l.apiErr.Swap(&err); {
		case err != nil && (was == nil || *was == nil):
			l.log.Warn("API server unreachable: refusing requests", "err", err)
		case err == nil && was != nil && *was != nil:
			l.log.Info("API server reachable again")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Healthy returns nil while the node cache is synced and the API server answers.
func (l *Lock) Healthy() error {
	if !l.nodes.HasSynced() {
		return errors.New("node cache not synced")
	}
	return l.apiDown()
}

// apiDown returns an *APIError while the last health probe failed.
func (l *Lock) apiDown() error {
	if p := l.apiErr.Load(); p != nil && *p != nil {
		return apiError("API server health", *p)
	}
	return nil
}

// HasSynced reports whether the node cache is filled; requests fail until it is.
func (l *Lock) HasSynced() bool { return l.nodes.HasSynced() }

// PreReboot asks for the reboot lock for the node Zincati identifies with p.ID. It
// returns nil only when the node holds the lock and is drained: the node may reboot.
// Otherwise it waits up to Options.Wait for a slot and for the drain, then returns why
// not yet (*HeldError, *DrainError, *APIError, or an unknown or ambiguous node).
func (l *Lock) PreReboot(ctx context.Context, p fleetlock.ClientParams) error {
	node, err := l.resolve(p.ID)
	if err != nil {
		l.countUnmatched("pre-reboot", err)
		return err
	}
	now := time.Now()
	r := &request{
		Lock:       l,
		name:       node.Name,
		group:      p.Group,
		log:        l.log.With("node", node.Name, "zincatiID", p.ID, "group", p.Group),
		expires:    now.Add(l.opts.Wait - rand.N(l.opts.Wait/4+1)),
		tieExpires: now.Add(max(l.opts.Wait, tieWait)),
	}
	err = r.run(ctx, node)
	l.noteOutcome(node.Name, err)
	return err
}

// SteadyState releases the lock the node holds, if any, uncordoning it if we cordoned
// it. A node that holds nothing, or that no node matches, costs no API request.
func (l *Lock) SteadyState(ctx context.Context, p fleetlock.ClientParams) (bool, error) {
	if err := l.apiDown(); err != nil {
		return false, err
	}
	node, err := l.resolve(p.ID)
	l.countUnmatched("steady-state", err)
	if errors.Is(err, fleetlock.ErrUnknownNode) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if lockOf(node).State != StateRebooting {
		return false, nil
	}
	if l.opts.ReleaseWhenReady() {
		err := l.awaitReady(ctx, node.Name)
		if errors.Is(err, ErrNotHolder) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	err = l.release(ctx, node, l.log.With("node", node.Name, "zincatiID", p.ID, "group", p.Group), releaseSteadyState)
	if errors.Is(err, ErrNotHolder) {
		return false, nil
	}
	return err == nil, err
}

// Release releases the lock node holds and uncordons it if we cordoned it; it returns
// ErrNotHolder if the node holds none. It is the operator's manual release.
func (l *Lock) Release(ctx context.Context, node string) error {
	n, err := l.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return apiError("get node", err)
	}
	return l.release(ctx, n, l.log.With("node", node), releaseManual)
}

// release clears node's lock in one conditioned write, which also uncordons the node
// if we cordoned it: there is never a moment with one done and not the other.
func (l *Lock) release(ctx context.Context, n *corev1.Node, log *slog.Logger, why releaseCause) error {
	for range maxConflicts {
		st := lockOf(n)
		if st.State != StateRebooting {
			return ErrNotHolder
		}
		w := write{resourceVersion: n.ResourceVersion, state: StateReady, since: l.opts.Now(), released: true}
		if !st.WasUnschedulable {
			w.unschedulable = new(false)
		}
		_, err := l.patch(ctx, n.Name, w)
		if apierrors.IsConflict(err) {
			if n, err = l.get(ctx, n.Name); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return apiError("release lock", err)
		}
		l.drainer.Forget(n.Name)
		rebooted := st.BootID == "" || n.Status.NodeInfo.BootID != st.BootID
		log.Info("reboot lock released", "by", string(why), "uncordoned", !st.WasUnschedulable,
			"heldFor", l.opts.Now().Sub(st.Since).Round(time.Second), "rebooted", rebooted)
		if why == releaseSteadyState {
			l.releases.WithLabelValues(st.Group, strconv.FormatBool(rebooted)).Inc()
			if !rebooted {
				log.Warn("released without a reboot: the boot ID is the one at the grant", "bootID", st.BootID)
				l.event(n.Name, corev1.EventTypeWarning, "RebootNotObserved", "Release",
					"steady-state released the slot, but the node's boot ID is still "+st.BootID+": the node did not reboot")
			}
		}
		return nil
	}
	return apiError("release lock", errTooManyConflicts)
}

// releaseCause says who released a slot.
type releaseCause string

const (
	releaseSteadyState releaseCause = "steady-state"
	releaseManual      releaseCause = "operator"
	releaseStale       releaseCause = "stale-holder"
	releaseDrainFailed releaseCause = "drain-failure-policy"
)

var errTooManyConflicts = errors.New("node kept changing: too many conflicts")

func (l *Lock) patch(ctx context.Context, name string, w write) (*corev1.Node, error) {
	return l.client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, w.patch(), metav1.PatchOptions{})
}

func (l *Lock) get(ctx context.Context, name string) (*corev1.Node, error) {
	n, err := l.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, apiError("get node", err)
	}
	return n, nil
}

func (l *Lock) countUnmatched(endpoint string, err error) {
	switch {
	case errors.Is(err, fleetlock.ErrUnknownNode):
		l.unmatched.WithLabelValues(endpoint, "unknown").Inc()
	case errors.Is(err, fleetlock.ErrAmbiguousNode):
		l.unmatched.WithLabelValues(endpoint, "ambiguous").Inc()
	}
}

// slots returns the group's slot count, at least 1 for a sane configuration.
func (l *Lock) slots(group string) int { return max(l.opts.Slots(group), 0) }

// signal wakes every waiter when the lock state of some node changes.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSignal() signal { return signal{ch: make(chan struct{})} }

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.ch)
	s.ch = make(chan struct{})
}

// jitter returns d plus up to 50%.
func jitter(d time.Duration) time.Duration {
	return d + rand.N(d/2+1)
}

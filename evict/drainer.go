package evict

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/flowcontrol"
)

// ErrStopped is the Progress.Err of a drain that cannot run because the Drainer's Run
// has returned.
var ErrStopped = errors.New("drainer stopped")

// ErrTimeout is wrapped by the Progress.Err of a drain that gave up (FailurePolicy
// Release).
var ErrTimeout = errors.New("drain timed out")

// Drainer drains nodes: it evicts the pods that must leave a node and reports, in a
// Progress, when they are gone. It keeps at most one drain per node. See the package
// documentation for the contract.
type Drainer struct {
	client      kubernetes.Interface
	opts        Options
	log         *slog.Logger
	limiter     flowcontrol.RateLimiter
	recorder    events.EventRecorder
	broadcaster events.EventBroadcaster // ours, when Options.Recorder is nil

	base    context.Context // parent of every drain's context; ends when Run's does
	stop    context.CancelFunc
	running chan struct{} // closed when Run starts
	runOnce sync.Once

	mu      sync.Mutex
	drains  map[string]*drain // by node: under way, drained or failed
	ending  map[string]*drain // forgotten drains not yet stopped, by node
	stopped bool              // Run has returned
	wg      sync.WaitGroup    // drain goroutines

	volumes cache.Indexer     // VolumeAttachments by node; set by Run
	pdbs    cache.Store       // PodDisruptionBudgets; set by Run
	gaveUp  map[string]*drain // drains that gave up, by node, kept past Forget; guarded by mu

	evictions *prometheus.CounterVec
}

// New returns a Drainer that uses client. Drains may be started at once; they begin
// work when Run runs.
func New(client kubernetes.Interface, opts Options) *Drainer {
	opts = opts.withDefaults()
	d := &Drainer{
		client:   client,
		opts:     opts,
		log:      opts.Logger,
		limiter:  flowcontrol.NewTokenBucketRateLimiter(float32(opts.EvictionsPerSecond), max(1, int(opts.EvictionsPerSecond))),
		recorder: opts.Recorder,
		running:  make(chan struct{}),
		drains:   map[string]*drain{},
		ending:   map[string]*drain{},
		gaveUp:   map[string]*drain{},

		evictions: newEvictionsCounter(),
	}
	if d.recorder == nil {
		d.broadcaster = events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
		d.recorder = d.broadcaster.NewRecorder(scheme.Scheme, eventController)
	}
	d.base, d.stop = context.WithCancel(context.Background())
	return d
}

// Run runs the drains until ctx ends, then stops them and returns once they have
// stopped. Call it once, with a context that lives as long as the server: drains
// outlive the requests that start them. While it runs, a watch on
// PodDisruptionBudgets lets a refused eviction be retried as soon as its budget
// allows a disruption.
func (d *Drainer) Run(ctx context.Context) {
	first := false
	d.runOnce.Do(func() { first = true })
	if !first {
		d.log.Error("drainer Run called twice")
		return
	}
	if d.broadcaster != nil {
		// Events recorded as the drains stop still get a moment to be posted.
		postCtx, stopPosting := context.WithCancel(context.WithoutCancel(ctx))
		if err := d.broadcaster.StartRecordingToSinkWithContext(postCtx); err != nil {
			d.log.Error("cannot post drain events", "err", err)
		}
		defer func() {
			d.broadcaster.Shutdown()
			time.AfterFunc(eventGrace, stopPosting)
		}()
	}
	factory := informers.NewSharedInformerFactoryWithOptions(d.client, 0, informers.WithTransform(stripManagedFields))
	pdbs := factory.Policy().V1().PodDisruptionBudgets().Informer()
	if _, err := pdbs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    d.pdbChanged,
		UpdateFunc: func(_, obj any) { d.pdbChanged(obj) },
	}); err != nil {
		d.log.Error("cannot watch disruption budgets", "err", err)
	}
	d.pdbs = pdbs.GetStore()
	d.watchErrors("the drains' PodDisruptionBudget cache", pdbs)
	volumes := factory.Storage().V1().VolumeAttachments().Informer()
	d.watchErrors("the drains' VolumeAttachment cache", volumes)
	d.volumesInformer(volumes)
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	close(d.running)
	<-ctx.Done()
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.stop()
	d.wg.Wait()
}

// watchErrors records inf's refusals in Options.WatchErrors, if set; call it before
// inf starts.
func (d *Drainer) watchErrors(what string, inf cache.SharedIndexInformer) {
	if d.opts.WatchErrors != nil {
		if err := d.opts.WatchErrors.Watch(what, inf); err != nil {
			d.log.Error("cannot record the informer's refusals", "informer", what, "err", err)
		}
	}
}

// isRunning reports whether Run has started: its informers' stores are set.
func (d *Drainer) isRunning() bool {
	select {
	case <-d.running:
		return true
	default:
		return false
	}
}

// eventGrace is how long Events may still be posted after Run's context ends.
const eventGrace = 5 * time.Second

// pdbChanged wakes the drains blocked by a budget that now allows a disruption.
func (d *Drainer) pdbChanged(obj any) {
	pdb, ok := obj.(*policyv1.PodDisruptionBudget)
	if !ok || pdb.Status.DisruptionsAllowed <= 0 || pdb.Status.ObservedGeneration < pdb.Generation {
		return
	}
	key := pdb.Namespace + "/" + pdb.Name
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dr := range d.drains {
		dr.kick(key)
	}
}

// Start starts draining node unless a drain of this Node object (its UID) is under
// way or done, and returns its progress without blocking or making a request. A
// drain of another Node object of the same name (deleted and re-created) is stopped
// and replaced by a fresh one. A drain that ended (drained, failed, or NodeGone)
// stays as it ended until Forget. After Run has returned, Start starts nothing: the
// progress it returns has Err ErrStopped, and its Done is closed only if the drain
// had ended before.
func (d *Drainer) Start(node *corev1.Node) Progress {
	d.mu.Lock()
	defer d.mu.Unlock()
	dr := d.drains[node.Name]
	if dr != nil && dr.uid == node.UID {
		p := dr.progress
		if d.stopped && !p.Phase.ended() {
			p.Err = ErrStopped
		}
		return p
	}
	if d.stopped {
		return Progress{Node: node.Name, NodeUID: node.UID, Err: ErrStopped, Done: make(chan struct{})}
	}
	if gone := d.gaveUp[node.Name]; gone != nil && gone.uid == node.UID && dr == nil {
		p := gone.progress // not drained again until GaveUp sees a change, or Retry
		p.GaveUpBefore = true
		return p
	}
	if dr != nil {
		dr.log.Info("drain stopped: the node was replaced", "nodeUID", dr.uid, "newNodeUID", node.UID)
		d.retire(dr)
	}
	return d.launch(newDrain(d, node, d.ending[node.Name])).progress
}

// launch registers a new drain and starts its goroutine; d.mu is held.
func (d *Drainer) launch(dr *drain) *drain {
	d.drains[dr.node] = dr
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		dr.run()
	}()
	return dr
}

// retire stops dr without waiting: its Done is closed once it has stopped; d.mu is
// held.
func (d *Drainer) retire(dr *drain) {
	delete(d.drains, dr.node)
	d.ending[dr.node] = dr
	dr.cancel()
	go func() {
		<-dr.exited
		dr.closeDone()
		d.mu.Lock()
		if d.ending[dr.node] == dr {
			delete(d.ending, dr.node)
		}
		d.mu.Unlock()
	}()
}

// Forget stops any drain of node and drops what is known of it. It returns once the
// drain has stopped: no eviction of it is sent afterwards. The stopped drain's Done is
// closed; its Progress is neither Drained nor Failed.
func (d *Drainer) Forget(node string) {
	d.mu.Lock()
	dr := d.drains[node]
	if dr == nil {
		d.mu.Unlock()
		return
	}
	d.retire(dr)
	d.mu.Unlock()

	<-dr.exited
	dr.closeDone()
	if p := dr.progress; !p.Phase.ended() { // dr's run has exited: no writer left
		dr.log.Info("drain stopped", "podsLeft", p.PodsLeft)
	}
}

// Progress returns the progress of node's drain, if the Drainer knows one.
func (d *Drainer) Progress(node string) (Progress, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dr := d.drains[node]
	if dr == nil {
		return Progress{}, false
	}
	return dr.progress, true
}

// Drains returns the progress of every drain the Drainer knows (under way, drained or
// failed, until forgotten), sorted by node.
func (d *Drainer) Drains() []Progress {
	d.mu.Lock()
	ps := make([]Progress, 0, len(d.drains))
	for _, dr := range d.drains {
		ps = append(ps, dr.progress)
	}
	d.mu.Unlock()
	sort.Slice(ps, func(i, j int) bool { return ps[i].Node < ps[j].Node })
	return ps
}

// publish stores a drain's new progress.
func (d *Drainer) publish(dr *drain, p Progress) {
	d.mu.Lock()
	dr.progress = p
	d.mu.Unlock()
}

// stripManagedFields drops what a drain never reads from cached objects.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

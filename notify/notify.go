package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nicholas-fedor/shoutrrr"
	"github.com/nicholas-fedor/shoutrrr/pkg/router"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/lock"
)

// Defaults of Options.
const (
	DefaultDrainBlockedAfter = 15 * time.Minute
	DefaultInterval          = 2 * time.Second
	DefaultBurst             = 5
	DefaultQueue             = 100
	// Controller is the reportingController of reboot-manager's Events.
	Controller = "reboot-manager"
)

// Options configure a Notifier. Only URL and Client are required.
type Options struct {
	// URL is where messages go: a shoutrrr service URL (slack://, teams://,
	// matrix://, generic+https://..., see https://shoutrrr.nickfedor.com/).
	URL string
	// Client watches the Events.
	Client kubernetes.Interface
	// Namespace holds the Events about Nodes; default "default", where Events about
	// cluster-scoped objects go.
	Namespace string
	// Instance is the reportingInstance of this replica's Events ("reboot-manager-" +
	// hostname, as client-go's events library sets it). Only its Events are told, so
	// that each replica tells what it did and nothing is told twice. Empty: every
	// reboot-manager Event.
	Instance string
	// DrainBlockedAfter is how long a drain stays blocked by a PodDisruptionBudget
	// before it is told; default DefaultDrainBlockedAfter.
	DrainBlockedAfter time.Duration
	// Interval and Burst limit the messages sent: one per Interval on average, Burst
	// at once; defaults DefaultInterval and DefaultBurst.
	Interval time.Duration
	Burst    int
	// Queue is how many messages may wait for the limit or a slow receiver; more are
	// dropped and counted. Default DefaultQueue.
	Queue int
	// Logger logs failed sends and drops; default discards.
	Logger *slog.Logger
}

// Notifier tells a chat channel or webhook about reboot-manager's work on nodes. It
// never blocks its callers: messages queue, are sent at a limited rate, and are
// dropped (and counted) when the queue is full.
type Notifier struct {
	opts    Options
	log     *slog.Logger
	sender  *router.ServiceRouter
	limiter *rate.Limiter
	queue   chan string
	results *prometheus.CounterVec

	mu      sync.Mutex
	blocked map[string]*time.Timer // node -> pending "drain blocked" message
}

// New checks the URL and returns a Notifier; Start runs it.
func New(o Options) (*Notifier, error) {
	if o.URL == "" || o.Client == nil {
		return nil, errors.New("notify: URL and Client are required")
	}
	sender, err := shoutrrr.CreateSender(o.URL)
	if err != nil {
		// The URL may hold a token: name only its scheme.
		scheme, _, _ := strings.Cut(o.URL, ":")
		return nil, fmt.Errorf("notification URL (%s:...): %w", scheme, errors.Unwrap(err))
	}
	if o.Namespace == "" {
		o.Namespace = corev1.NamespaceDefault
	}
	if o.DrainBlockedAfter <= 0 {
		o.DrainBlockedAfter = DefaultDrainBlockedAfter
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Notifier{
		opts: o, log: o.Logger, sender: sender,
		limiter: rate.NewLimiter(rate.Every(o.Interval), o.Burst),
		queue:   make(chan string, o.Queue),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_notifications_total",
			Help: "Notifications (--notify-url) by result: sent, failed (the receiver refused or timed out), dropped (the queue was full).",
		}, []string{"result"}),
		blocked: map[string]*time.Timer{},
	}
	for _, r := range []string{"sent", "failed", "dropped"} {
		n.results.WithLabelValues(r)
	}
	return n, nil
}

// Start watches this replica's Events and sends messages until ctx ends, then returns
// nil; an error only if the Event watch cannot start.
func (n *Notifier) Start(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(n.opts.Client, 0, informers.WithNamespace(n.opts.Namespace))
	informer := factory.Events().V1().Events().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, inInitialList bool) {
			if ev, ok := obj.(*eventsv1.Event); ok && !inInitialList {
				n.event(ev)
			}
		},
	}); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer n.stopTimers()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-n.queue:
			if err := n.limiter.Wait(ctx); err != nil {
				return nil // ctx ended
			}
			n.send(msg)
		}
	}
}

func (n *Notifier) send(msg string) {
	var failed []error
	for _, err := range n.sender.Send(msg, nil) {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		n.results.WithLabelValues("failed").Inc()
		n.log.Warn("notification not sent", "err", errors.Join(failed...))
		return
	}
	n.results.WithLabelValues("sent").Inc()
}

// Notify queues msg and returns at once; false if the queue was full and msg was
// dropped.
func (n *Notifier) Notify(msg string) bool {
	select {
	case n.queue <- msg:
		return true
	default:
		n.results.WithLabelValues("dropped").Inc()
		n.log.Warn("notification dropped: queue full", "queue", cap(n.queue))
		return false
	}
}

// event turns one of reboot-manager's Events into a message, or a pending one.
func (n *Notifier) event(ev *eventsv1.Event) {
	if ev.ReportingController != Controller || ev.Regarding.Kind != "Node" ||
		(n.opts.Instance != "" && ev.ReportingInstance != n.opts.Instance) {
		return
	}
	node := ev.Regarding.Name
	switch ev.Reason {
	case "DrainStarted":
		n.cancelBlocked(node)
		n.Notify(fmt.Sprintf("Draining node %s for its reboot: %s", node, ev.Note))
	case "DrainBlocked":
		n.pendBlocked(node, ev.Note)
	case "DrainSucceeded":
		n.cancelBlocked(node)
	case "DrainFailed":
		n.cancelBlocked(node)
		n.Notify(fmt.Sprintf("The drain of node %s gave up: %s", node, ev.Note))
	case "NodeReplacing":
		n.Notify(fmt.Sprintf("Replacing node %s, which failed to return from its reboot: %s", node, ev.Note))
	case "NodeReplaced":
		n.Notify(fmt.Sprintf("Node %s replaced a node that failed to return: %s", node, ev.Note))
	case "ReplacementFailed":
		n.Notify(fmt.Sprintf("Replacing node %s failed: %s", node, ev.Note))
	}
}

// pendBlocked tells about a blocked drain if it is still blocked after
// DrainBlockedAfter (no DrainSucceeded, DrainFailed or new drain meanwhile).
func (n *Notifier) pendBlocked(node, note string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.blocked[node]; ok {
		return // the first block of the drain counts
	}
	after := n.opts.DrainBlockedAfter
	n.blocked[node] = time.AfterFunc(after, func() {
		n.Notify(fmt.Sprintf("The drain of node %s has been blocked for %s: %s. Run `reboot-manager status`.", node, after, note))
	})
}

func (n *Notifier) cancelBlocked(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.blocked[node]; ok {
		t.Stop()
		delete(n.blocked, node)
	}
}

func (n *Notifier) stopTimers() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for node, t := range n.blocked {
		t.Stop()
		delete(n.blocked, node)
	}
}

// Hooks returns next's grant hooks, which also tell when a node is told to reboot and
// when its slot is released. The message is queued after next's hook, and
// only if next's ToldToReboot let the 2xx go.
func (n *Notifier) Hooks(next lock.GrantHooks) lock.GrantHooks {
	if next == nil {
		next = lock.NoGrantHooks{}
	}
	return hooks{next: next, n: n}
}

type hooks struct {
	next lock.GrantHooks
	n    *Notifier
}

func (h hooks) Granted(ctx context.Context, g lock.Grant) { h.next.Granted(ctx, g) }

func (h hooks) ToldToReboot(ctx context.Context, node *corev1.Node, g lock.Grant, at time.Time) error {
	if err := h.next.ToldToReboot(ctx, node, g, at); err != nil {
		return err
	}
	h.n.Notify(fmt.Sprintf("Node %s (group %s) is drained and told to reboot.", g.Node, g.Group))
	return nil
}

func (h hooks) Released(ctx context.Context, g lock.Grant) {
	h.next.Released(ctx, g)
	h.n.cancelBlocked(g.Node)
	// Not "back": a release may also be an operator's, a stale holder's, a drain that
	// gave up, or a reservation given back unclaimed (the node's Events say which).
	h.n.Notify(fmt.Sprintf("Node %s (group %s) released its reboot slot after %s.", g.Node, g.Group, time.Since(g.Promoted).Round(time.Second)))
}

// Describe and Collect export rebootmanager_notifications_total.
func (n *Notifier) Describe(ch chan<- *prometheus.Desc) { n.results.Describe(ch) }

// Collect implements prometheus.Collector.
func (n *Notifier) Collect(ch chan<- prometheus.Metric) { n.results.Collect(ch) }

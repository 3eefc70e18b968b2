package evict

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/reboot-manager/reboot-manager/internal/watcherr"
)

// FailurePolicy says what a drain does once Options.Timeout has passed and pods are
// still on the node.
type FailurePolicy int

const (
	// KeepRefusing, the default, never gives up and never deletes: the drain keeps
	// retrying evictions and reports what blocks it, and the node is not rebooted until
	// every pod has left. Timeout does not apply.
	KeepRefusing FailurePolicy = iota
	// Release gives up after Timeout: Progress.Failed is set and Done closed, so that
	// the lock releases the node (and uncordons it). Nothing is deleted.
	Release
	// Force, after Timeout, DELETEs the pods whose evictions are still refused, with
	// each pod's own grace period, and then waits for them to be gone. A pod that
	// arrived during the drain is evicted for a Timeout of its own (counted from when
	// the drain found it) before it is deleted.
	Force
)

// String returns the policy's name as ParseFailurePolicy accepts it.
func (p FailurePolicy) String() string {
	switch p {
	case KeepRefusing:
		return "KeepRefusing"
	case Release:
		return "Release"
	case Force:
		return "Force"
	default:
		return fmt.Sprintf("FailurePolicy(%d)", int(p))
	}
}

// ParseFailurePolicy reads a policy name, in any case, with or without dashes:
// "KeepRefusing", "keep-refusing", "release", "force".
func ParseFailurePolicy(s string) (FailurePolicy, error) {
	switch strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "-", "")) {
	case "keeprefusing", "":
		return KeepRefusing, nil
	case "release":
		return Release, nil
	case "force":
		return Force, nil
	}
	return 0, fmt.Errorf("unknown drain failure policy %q (want KeepRefusing, Release or Force)", s)
}

// Options configure a Drainer. The zero value works; each field documents its default.
type Options struct {
	// Parallelism is how many evictions (or, under Force, deletions) one drain has in
	// flight at once. Default 5.
	Parallelism int
	// EvictionsPerSecond caps the eviction and deletion requests of all drains
	// together, client side (the client's own QPS limit applies as well). Default 10.
	EvictionsPerSecond float64
	// BackoffBase and BackoffMax bound the wait before a pod's next eviction attempt
	// after a refusal or an error: BackoffBase·2^(n-1) after n failures, capped at
	// BackoffMax, of which a random 50% to 100% is waited. Defaults 1s and 30s. A
	// PodDisruptionBudget whose status starts allowing disruptions cuts the wait short.
	BackoffBase, BackoffMax time.Duration
	// FailurePolicy is what a drain does once Timeout has passed. Default KeepRefusing.
	FailurePolicy FailurePolicy
	// Timeout is how long after its start a drain may run before Release or Force
	// act. Default 15 minutes. Unused under KeepRefusing.
	Timeout time.Duration
	// Self is "namespace/name" of reboot-manager's own pod. When it runs on the node
	// being drained it is evicted last, once every other pod has left, so that the
	// drain gets as far as it can before this process is stopped. Default: none.
	Self string
	// Logger receives one info line per drain state change; per-retry detail is at
	// debug level. Default: discard.
	Logger *slog.Logger
	// Recorder posts the Events on the Node. Default: a recorder of the Drainer's own,
	// posting events.k8s.io/v1 Events through the Drainer's client as
	// "reboot-manager" while Run runs.
	Recorder events.EventRecorder
	// WatchErrors, if set, records the refusals (403, 401) of the drains' lists and
	// watches (PodDisruptionBudgets, VolumeAttachments, a drain's pods and Node), for
	// the server's /readyz. Default: none (client-go logs them).
	WatchErrors *watcherr.Errors
	// SkipWaitForDeleteTimeout is how long past its deletion timestamp (which already
	// includes its grace period) a target pod that is terminating on a node whose
	// kubelet is silent (Ready Unknown, as the node lifecycle controller marks it)
	// is waited for. Past it the pod counts as gone: its eviction was accepted, so its
	// budget was honoured, and with the kubelet silent nobody would ever finish its
	// deletion. As kubectl drain's --skip-wait-for-delete-timeout, but only while the
	// kubelet is silent: a live kubelet that reports Ready False still stops its pods.
	// A drain also waits at least the pod's grace period plus this timeout from when
	// it first saw the pod terminating, on its own clock, so that a clock running
	// ahead of the API server's does not cut the wait short (after a restart, that
	// can add up to one grace period). Default 1 minute; negative: wait for ever.
	SkipWaitForDeleteTimeout time.Duration
	// VolumeDetachTimeout bounds the wait, once the pods are gone, for the node's
	// VolumeAttachments (storage.k8s.io/v1, spec.nodeName = the node) to be detached:
	// a node rebooted with CSI volumes still attached can leave them stuck. Past it
	// the FailurePolicy applies: KeepRefusing blocks (BlockedByVolumes), Release
	// fails, Force reports the node drained anyway. Default 5 minutes.
	VolumeDetachTimeout time.Duration
	// ReturningRounds is how many times the drain's final check may find pods that
	// must leave and arrived since the drain began (pods that tolerate the cordon,
	// or name the node) and evict them. Past it, newcomers are not evicted: they
	// block the drain (BlockedByPodsReturning) until they leave, and under Release
	// or Force the drain fails at Timeout. Default 3.
	ReturningRounds int
	// ReturnRetry is how long a pod that keeps returning (BlockedByPodsReturning) is
	// left alone before it is evicted once more: the cause may pass (a scheduler whose
	// cache missed the cordon, say after an API-server outage), and the drain then
	// ends, with at most one eviction per ReturnRetry of a workload that really
	// tolerates the cordon. Default 30 seconds.
	ReturnRetry time.Duration
	// BlockedEventInterval is how often the Warning Event DrainBlocked is posted
	// again while the same block lasts (Events expire, after an hour by default).
	// Default 30 minutes.
	BlockedEventInterval time.Duration
	// Clock tells the time and makes the timers of the drains' waits. Default: the
	// real clock.
	Clock clock.Clock
	// Since, if set, returns when the node's drain began for Timeout's purposes (the
	// lock: when the node took its slot, so that a drain resumed by another replica,
	// or after a restart, keeps the deadline of the first); a zero time, or a time
	// after now, counts as now. Default: the moment Start starts the drain.
	Since func(node *corev1.Node) time.Time
}

// Defaults of Options.
const (
	DefaultParallelism              = 5
	DefaultEvictionsPerSecond       = 10
	DefaultBackoffBase              = time.Second
	DefaultBackoffMax               = 30 * time.Second
	DefaultTimeout                  = 15 * time.Minute
	DefaultReturningRounds          = 3
	DefaultReturnRetry              = 30 * time.Second
	DefaultSkipWaitForDeleteTimeout = time.Minute
	DefaultVolumeDetachTimeout      = 5 * time.Minute
	DefaultBlockedEventInterval     = 30 * time.Minute
)

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.Parallelism <= 0 {
		o.Parallelism = DefaultParallelism
	}
	if o.EvictionsPerSecond <= 0 {
		o.EvictionsPerSecond = DefaultEvictionsPerSecond
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = DefaultBackoffBase
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = o.BackoffBase
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.SkipWaitForDeleteTimeout == 0 {
		o.SkipWaitForDeleteTimeout = DefaultSkipWaitForDeleteTimeout
	}
	if o.VolumeDetachTimeout <= 0 {
		o.VolumeDetachTimeout = DefaultVolumeDetachTimeout
	}
	if o.ReturningRounds <= 0 {
		o.ReturningRounds = DefaultReturningRounds
	}
	if o.ReturnRetry <= 0 {
		o.ReturnRetry = DefaultReturnRetry
	}
	if o.BlockedEventInterval <= 0 {
		o.BlockedEventInterval = DefaultBlockedEventInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return o
}

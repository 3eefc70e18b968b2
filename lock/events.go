package lock

import (
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// The reasons of the Events the lock posts on Nodes, and of the refusals metric.
const (
	// ReasonRebootNotObserved (Warning): a slot was released although the node's boot
	// ID is still the one recorded at the grant.
	ReasonRebootNotObserved = "RebootNotObserved"
	// ReasonStaleHolderReleased (Warning): a holder that rebooted and stayed Ready
	// without calling steady-state was released.
	ReasonStaleHolderReleased = "StaleHolderReleased"

	// The policy's refusals (Normal), one per fleetlock sentinel: see RefusalReason.
	ReasonRebootPaused         = "RebootPaused"
	ReasonRebootHeld           = "RebootHeld"
	ReasonRebootWindowClosed   = "RebootWindowClosed"
	ReasonRebootGap            = "RebootGap"
	ReasonRebootGroupNotReady  = "RebootGroupNotReady"
	ReasonRebootBlockedByAlert = "RebootBlockedByAlert"
	ReasonRebootBlockedByPods  = "RebootBlockedByPods"
	ReasonRebootGroupOrder     = "RebootGroupOrder"
)

// refusalReasons is the one table from a refusal's fleetlock sentinel to its reason.
var refusalReasons = []struct {
	err    error
	reason string
}{
	{fleetlock.ErrPaused, ReasonRebootPaused},
	{fleetlock.ErrNodeHeld, ReasonRebootHeld},
	{fleetlock.ErrWindowClosed, ReasonRebootWindowClosed},
	{fleetlock.ErrRebootGap, ReasonRebootGap},
	{fleetlock.ErrGroupNotReady, ReasonRebootGroupNotReady},
	{fleetlock.ErrAlertFiring, ReasonRebootBlockedByAlert},
	{fleetlock.ErrPodsBlocking, ReasonRebootBlockedByPods},
	{fleetlock.ErrGroupOrder, ReasonRebootGroupOrder},
}

// RefusalReason returns the Event reason of a refusal that matches sentinel (a
// fleetlock error such as fleetlock.ErrWindowClosed), or "RebootRefused" for any other.
func RefusalReason(sentinel error) string {
	for _, r := range refusalReasons {
		if errors.Is(sentinel, r.err) {
			return r.reason
		}
	}
	return "RebootRefused"
}

// NewRefusal returns the *Refusal of sentinel with message msg, its reason from the
// table of RefusalReason.
func NewRefusal(sentinel error, msg string) *Refusal {
	return &Refusal{Reason: RefusalReason(sentinel), Err: sentinel, Msg: msg}
}

// RefusalEventInterval is how often the Event of a refusal whose cause lasts is posted
// again: Events expire (an hour by default), and a node refused for a day must still
// show why.
const RefusalEventInterval = 30 * time.Minute

// refusalPosted is the refusal last posted as an Event on a node, and when.
type refusalPosted struct {
	cause string
	at    time.Time
}

// noteOutcome counts a pre-reboot refusal by its reason and posts an Event on the node
// when its cause differs from the last one posted, or when RefusalEventInterval has
// passed since, so that a node asking every few minutes for hours neither floods the
// Events nor loses the one that explains it.
func (l *Lock) noteOutcome(node, group string, err error) {
	var ref *Refusal
	if !errors.As(err, &ref) {
		if err == nil {
			l.refusedMu.Lock()
			delete(l.lastRefusal, node)
			l.refusedMu.Unlock()
		}
		return
	}
	reason := ref.Reason
	if reason == "" {
		reason = RefusalReason(ref.Err)
	}
	l.refusals.WithLabelValues(l.groupLabel(group), reason).Inc()
	cause := ref.Cause
	if cause == "" {
		cause = reason
	}
	now := l.opts.Clock.Now()
	l.refusedMu.Lock()
	last, seen := l.lastRefusal[node]
	post := !seen || last.cause != cause || now.Sub(last.at) >= RefusalEventInterval
	if post {
		l.lastRefusal[node] = refusalPosted{cause: cause, at: now}
	}
	l.refusedMu.Unlock()
	if post {
		eventType := corev1.EventTypeNormal
		if ref.Warning {
			eventType = corev1.EventTypeWarning
		}
		l.event(node, eventType, reason, "Refuse", ref.Msg)
	}
}

// event posts an Event on the node, if there is a recorder.
func (l *Lock) event(node, eventType, reason, action, note string) {
	if l.opts.Recorder == nil {
		return
	}
	l.opts.Recorder.Eventf(evict.NodeRef(node), nil, eventType, reason, action, "%s", note)
}

// ReasonMachineReRegistered (Normal): a holder's machine came back under a new Node
// name; the old Node's slot was released.
const ReasonMachineReRegistered = "MachineReRegistered"

// ReasonNodeUncordoned (Warning): a holder was found uncordoned by someone else
// before its 2xx; it is not told to reboot, nor cordoned again.
const ReasonNodeUncordoned = "NodeUncordoned"

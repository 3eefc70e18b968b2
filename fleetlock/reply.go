package fleetlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
)

// ClientParams identifies the node asking for (or returning) the reboot lock.
type ClientParams struct {
	// ID is Zincati's app-specific machine ID (see ZincatiID); case-sensitive.
	ID string `json:"id"`
	// Group is the Zincati reboot group, "default" unless configured.
	Group string `json:"group"`
}

// Request is the body Zincati posts to both endpoints.
type Request struct {
	// ClientParams identifies the node.
	ClientParams ClientParams `json:"client_params"`
}

// Kind is the machine-readable outcome carried in every Reply. The set is
// small and fixed because Zincati uses it as a Prometheus label.
type Kind string

// Reply is the JSON body of every response, success or not.
type Reply struct {
	// Kind is the outcome, one of the Kind constants.
	Kind Kind `json:"kind"`
	// Value is a human-readable explanation; Zincati logs it. Never empty.
	Value string `json:"value"`
}

// The kinds. Their status codes are listed in the package documentation and
// defined in one table (kinds) in this file.
const (
	// KindLockGranted (200): pre-reboot succeeded; the node may reboot now.
	KindLockGranted Kind = "lock_granted"
	// KindLockReleased (200): steady-state released the lock the node held.
	KindLockReleased Kind = "lock_released"
	// KindLockNotHeld (200): steady-state found no lock held by the node.
	KindLockNotHeld Kind = "lock_not_held"
	// KindUnauthorized (401): the request carries no credentials or wrong ones;
	// ErrUnauthorized. The reply has the header WWW-Authenticate.
	KindUnauthorized Kind = "unauthorized"
	// KindForbidden (403): the requester may not act for this node or group;
	// ErrForbidden.
	KindForbidden Kind = "forbidden"
	// KindLockHeld (409): another node holds the lock; ErrLockHeld.
	KindLockHeld Kind = "lock_held"
	// KindDrainInProgress (409): the node is being drained; ErrDrainInProgress.
	KindDrainInProgress Kind = "drain_in_progress"
	// KindDrainBlocked (409): draining the node cannot proceed; ErrDrainBlocked.
	KindDrainBlocked Kind = "drain_blocked"
	// KindPaused (409): an operator paused all reboots; ErrPaused.
	KindPaused Kind = "paused"
	// KindNodeHeld (409): an operator holds this node's reboot; ErrNodeHeld.
	KindNodeHeld Kind = "node_held"
	// KindWindowClosed (409): the group's reboot windows are closed; ErrWindowClosed.
	KindWindowClosed Kind = "window_closed"
	// KindRebootGap (409): the group's minimum gap since its last reboot has not
	// passed; ErrRebootGap.
	KindRebootGap Kind = "reboot_gap"
	// KindAlertFiring (409): a matching alert fires; ErrAlertFiring.
	KindAlertFiring Kind = "alert_firing"
	// KindBlockerCheckFailing (409): a blocker's check has no clean answer (it
	// failed, answered partly, or is stale), so it blocks; ErrBlockerCheckFailing.
	KindBlockerCheckFailing Kind = "blocker_check_failing"
	// KindPodsBlocking (409): pods matching a blocker's selector exist; ErrPodsBlocking.
	KindPodsBlocking Kind = "pods_blocking"
	// KindGroupNotReady (409): another node of the group is not Ready;
	// ErrGroupNotReady.
	KindGroupNotReady Kind = "group_not_ready"
	// KindGroupOrder (409): a node of a group this group goes after (the policy's
	// after) holds, claims or waits for a slot; ErrGroupOrder.
	KindGroupOrder Kind = "group_order"
	// KindNodeNotReady (409): steady-state from a node not Ready again yet, with the
	// health gate on: the slot stays held; ErrNodeNotReady.
	KindNodeNotReady Kind = "node_not_ready"
	// KindNodeUncordoned (409): pre-reboot from a holder that someone else uncordoned:
	// it is not told to reboot, and not cordoned again over their decision;
	// ErrNodeUncordoned.
	KindNodeUncordoned Kind = "node_uncordoned"
	// KindNodeGone (422): the Node object the request worked for was deleted (or
	// replaced by a new one of the same name) while it waited; ErrNodeGone.
	KindNodeGone Kind = "node_gone"
	// KindUnknownNode (422): no Kubernetes node matches the ID; ErrUnknownNode.
	KindUnknownNode Kind = "unknown_node"
	// KindAmbiguousNode (422): several nodes match the ID; ErrAmbiguousNode.
	KindAmbiguousNode Kind = "ambiguous_node"
	// KindInvalidRequest (400): bad header or body.
	KindInvalidRequest Kind = "invalid_request"
	// KindMethodNotAllowed (405): known path, method other than POST.
	KindMethodNotAllowed Kind = "method_not_allowed"
	// KindNotFound (404): unknown path.
	KindNotFound Kind = "not_found"
	// KindBodyTooLarge (413): body over Options.MaxBodyBytes.
	KindBodyTooLarge Kind = "body_too_large"
	// KindTooManyRequests (429): too many requests at once (password checks waiting,
	// requests held for one node); ask again later; ErrTooManyRequests.
	KindTooManyRequests Kind = "too_many_requests"
	// KindAPIUnavailable (503): try again later; ErrUnavailable or a context error.
	KindAPIUnavailable Kind = "api_unavailable"
	// KindInternalError (500): any other error, or a panic in the Locker.
	KindInternalError Kind = "internal_error"
)

// Errors a Locker returns, wrapped (fmt.Errorf("...: %w", ErrLockHeld)) or
// matched by a typed error's Is method. Any other error is an internal_error.
var (
	// ErrUnauthorized means the request carries no credentials, or wrong ones.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden means the requester is known but may not make this request.
	ErrForbidden = errors.New("forbidden")
	// ErrLockHeld means another node holds the reboot lock.
	ErrLockHeld = errors.New("reboot lock held by another node")
	// ErrDrainInProgress means the node is being drained; ask again later.
	ErrDrainInProgress = errors.New("node drain in progress")
	// ErrDrainBlocked means draining the node cannot currently proceed.
	ErrDrainBlocked = errors.New("node drain blocked")
	// ErrPaused means an operator paused all reboots.
	ErrPaused = errors.New("reboots paused")
	// ErrNodeHeld means an operator holds this node's reboot.
	ErrNodeHeld = errors.New("node held by an operator")
	// ErrWindowClosed means no reboot window of the group is open.
	ErrWindowClosed = errors.New("reboot window closed")
	// ErrRebootGap means the group's last reboot ended too recently.
	ErrRebootGap = errors.New("too soon after the group's last reboot")
	// ErrAlertFiring means a matching alert fires.
	ErrAlertFiring = errors.New("alert firing")
	// ErrBlockerCheckFailing means a blocker could not be checked cleanly.
	ErrBlockerCheckFailing = errors.New("blocker check failing")
	// ErrPodsBlocking means pods matching a blocker's selector exist.
	ErrPodsBlocking = errors.New("blocking pods exist")
	// ErrGroupNotReady means another node of the group is not Ready.
	ErrGroupNotReady = errors.New("another node of the group is not ready")
	// ErrGroupOrder means a node of a group this one goes after holds, claims or waits
	// for a slot.
	ErrGroupOrder = errors.New("a group this one goes after is not done")
	// ErrNodeNotReady means the node is not Ready again after its reboot.
	ErrNodeNotReady = errors.New("node not ready yet")
	// ErrNodeUncordoned means someone else uncordoned the node while it held a slot.
	ErrNodeUncordoned = errors.New("node uncordoned by someone else")
	// ErrNodeGone means the Node object of the request's grant was deleted.
	ErrNodeGone = errors.New("node deleted")
	// ErrUnknownNode means no Kubernetes node matches the client ID.
	ErrUnknownNode = errors.New("no node matches the client id")
	// ErrAmbiguousNode means more than one Kubernetes node matches the client ID.
	ErrAmbiguousNode = errors.New("several nodes match the client id")
	// ErrTooManyRequests means too many requests are waiting for the same resource.
	ErrTooManyRequests = errors.New("too many requests")
	// ErrUnavailable means a dependency (e.g. the Kubernetes API) is unavailable.
	ErrUnavailable = errors.New("api unavailable")
)

// Errors only this package produces.
var (
	errInvalidRequest   = errors.New("invalid request")
	errMethodNotAllowed = errors.New("method not allowed: use POST")
	errNotFound         = errors.New("not found")
	errBodyTooLarge     = errors.New("request body too large")
	errInternal         = errors.New("internal server error")
)

// kindSpec is one row of the kinds table.
type kindSpec struct {
	kind   Kind
	status int
	err    error  // sentinel matched with errors.Is; nil for success kinds
	value  string // default value for success kinds
}

// kinds is the one place that maps outcomes to kinds and status codes.
// Errors match the first row whose sentinel they wrap.
var kinds = []kindSpec{
	{KindLockGranted, http.StatusOK, nil, "reboot lock granted: reboot now"},
	{KindLockReleased, http.StatusOK, nil, "reboot lock released"},
	{KindLockNotHeld, http.StatusOK, nil, "no reboot lock held"},
	{KindUnauthorized, http.StatusUnauthorized, ErrUnauthorized, ""},
	{KindForbidden, http.StatusForbidden, ErrForbidden, ""},
	{KindLockHeld, http.StatusConflict, ErrLockHeld, ""},
	{KindDrainInProgress, http.StatusConflict, ErrDrainInProgress, ""},
	{KindDrainBlocked, http.StatusConflict, ErrDrainBlocked, ""},
	{KindPaused, http.StatusConflict, ErrPaused, ""},
	{KindNodeHeld, http.StatusConflict, ErrNodeHeld, ""},
	{KindWindowClosed, http.StatusConflict, ErrWindowClosed, ""},
	{KindRebootGap, http.StatusConflict, ErrRebootGap, ""},
	{KindAlertFiring, http.StatusConflict, ErrAlertFiring, ""},
	{KindBlockerCheckFailing, http.StatusConflict, ErrBlockerCheckFailing, ""},
	{KindPodsBlocking, http.StatusConflict, ErrPodsBlocking, ""},
	{KindGroupNotReady, http.StatusConflict, ErrGroupNotReady, ""},
	{KindGroupOrder, http.StatusConflict, ErrGroupOrder, ""},
	{KindNodeNotReady, http.StatusConflict, ErrNodeNotReady, ""},
	{KindNodeUncordoned, http.StatusConflict, ErrNodeUncordoned, ""},
	{KindNodeGone, http.StatusUnprocessableEntity, ErrNodeGone, ""},
	{KindUnknownNode, http.StatusUnprocessableEntity, ErrUnknownNode, ""},
	{KindAmbiguousNode, http.StatusUnprocessableEntity, ErrAmbiguousNode, ""},
	{KindInvalidRequest, http.StatusBadRequest, errInvalidRequest, ""},
	{KindMethodNotAllowed, http.StatusMethodNotAllowed, errMethodNotAllowed, ""},
	{KindNotFound, http.StatusNotFound, errNotFound, ""},
	{KindBodyTooLarge, http.StatusRequestEntityTooLarge, errBodyTooLarge, ""},
	{KindTooManyRequests, http.StatusTooManyRequests, ErrTooManyRequests, ""},
	{KindAPIUnavailable, http.StatusServiceUnavailable, ErrUnavailable, ""},
	{KindInternalError, http.StatusInternalServerError, errInternal, ""},
}

// outcome maps every outcome to a status and a Reply: a nil err yields the
// success kind; a non-nil err yields the kind of the first sentinel it wraps,
// api_unavailable for context cancellation or deadline, else internal_error.
// The value is the error's message, except for internal_error whose details
// are only logged.
func outcome(success Kind, err error) (int, Reply) {
	row, rep := outcomeRow(success, err)
	return kinds[row].status, rep
}

// outcomeRow is outcome, with the index of the kind's row in kinds.
func outcomeRow(success Kind, err error) (int, Reply) {
	for i, s := range kinds {
		switch {
		case err == nil && s.kind == success:
			return i, Reply{s.kind, s.value}
		case err != nil && s.err != nil && errors.Is(err, s.err):
			return i, Reply{s.kind, message(err, s.err)}
		}
	}
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return outcomeRow("", &detail{ErrUnavailable, err.Error()})
	}
	return len(kinds) - 1, Reply{KindInternalError, errInternal.Error()}
}

// encodedReplies are the JSON encodings (with the encoder's newline) of the
// success kinds' replies, which carry the kind's default value, by kinds' index.
var encodedReplies = func() [][]byte {
	out := make([][]byte, len(kinds))
	for i, s := range kinds {
		if s.value == "" {
			continue
		}
		var b bytes.Buffer
		if err := json.NewEncoder(&b).Encode(Reply{s.kind, s.value}); err != nil {
			panic(err)
		}
		out[i] = b.Bytes()
	}
	return out
}()

// encodedReply returns rep's JSON encoding if it is a success kind's default
// reply, else nil.
func encodedReply(rep Reply) []byte {
	for i, s := range kinds {
		if s.value != "" && s.kind == rep.Kind && s.value == rep.Value {
			return encodedReplies[i]
		}
	}
	return nil
}

// message is err's text, or the sentinel's when err's is empty.
func message(err, sentinel error) string {
	if msg := err.Error(); msg != "" {
		return msg
	}
	return sentinel.Error()
}

// detail is an error of a sentinel's kind whose message is msg alone.
type detail struct {
	kind error
	msg  string
}

func (d *detail) Error() string { return d.msg }
func (d *detail) Unwrap() error { return d.kind }

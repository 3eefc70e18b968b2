package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock"
)

// DefaultCacheTTL is how long a successful password check is remembered.
const DefaultCacheTTL = 10 * time.Minute

// Reason says why a request was refused; it is the label of
// rebootmanager_access_refused_total, so the set is small and fixed.
type Reason string

// The reasons.
const (
	// ReasonNoCredentials: the request carries no Basic credentials (401).
	ReasonNoCredentials Reason = "no_credentials"
	// ReasonBadCredentials: unknown user, wrong password, or one over
	// MaxPasswordBytes (401).
	ReasonBadCredentials Reason = "bad_credentials"
	// ReasonWrongGroup: right password, but no line of the user is for the request's
	// group (403).
	ReasonWrongGroup Reason = "wrong_group"
	// ReasonWrongNode: right password, but no line of the user for the group selects
	// the node the request's ID belongs to (403).
	ReasonWrongNode Reason = "wrong_node"
	// ReasonOtherGroup: the node holds a slot of another group than the request's:
	// the request neither releases nor re-grants it (403).
	ReasonOtherGroup Reason = "other_group"
	// ReasonSourceAddress: the client address is not one of the node's (403).
	ReasonSourceAddress Reason = "source_address"
	// ReasonBusy: too many password checks are waiting (429).
	ReasonBusy Reason = "busy"
)

// RefusedError is what a Guard returns for a request it refuses. It matches
// fleetlock.ErrUnauthorized for the credential reasons, fleetlock.ErrTooManyRequests
// for ReasonBusy, fleetlock.ErrForbidden for the others; its message is the reply's
// value.
type RefusedError struct {
	Reason Reason
	Msg    string
}

func (e *RefusedError) Error() string { return e.Msg }

// Is makes errors.Is match fleetlock.ErrUnauthorized, fleetlock.ErrTooManyRequests or
// fleetlock.ErrForbidden.
func (e *RefusedError) Is(target error) bool {
	switch e.Reason {
	case ReasonNoCredentials, ReasonBadCredentials:
		return target == fleetlock.ErrUnauthorized
	case ReasonBusy:
		return target == fleetlock.ErrTooManyRequests
	}
	return target == fleetlock.ErrForbidden
}

// NodeResolver finds the node a Zincati ID belongs to, without an API request.
// *lock.Lock is one (lock.Lock.Resolve, from its node cache). The node returned is
// only read: its labels, its rebootmanager/ annotations and its status.addresses.
type NodeResolver interface {
	Resolve(id string) (*corev1.Node, error)
}

// Options configure a Guard. With neither Credentials, Nodes nor Resolver, in front
// of a Locker that is no NodeResolver, a Guard lets everything through.
type Options struct {
	// Credentials, when set, requires HTTP Basic credentials of a line for the
	// request's group whose node selector matches the request's node. It needs
	// Resolver (or Nodes): without one, only lines for every node (*) can pass.
	Credentials CredentialSource
	// Nodes, when set, turns source-address verification on: a request for a node is
	// accepted only from one of the IP addresses in its status.addresses.
	Nodes NodeResolver
	// Resolver finds the node of a request's ID, to match the credentials' node
	// selectors and to refuse a request in another group than the node's claim or
	// hold (ReasonOtherGroup). Default: Nodes, else the wrapped Locker if it is a
	// NodeResolver (*lock.Lock is). With a Resolver, the group check is on even
	// without Credentials.
	Resolver NodeResolver
	// TrustedProxies are the address ranges whose X-Forwarded-For is believed; see
	// the package documentation for the rule. Only used with Nodes.
	TrustedProxies []netip.Prefix
	// CacheTTL is how long a successful password check is remembered. Default
	// DefaultCacheTTL.
	CacheTTL time.Duration
	// MaxQueuedChecks is how many password checks may wait for a CPU; past it a
	// check is refused at once with too_many_requests (429). Checks answered from the
	// cache never wait. Default DefaultMaxQueuedChecks.
	MaxQueuedChecks int
	// Logger receives one info line per refusal. Default: discard.
	Logger *slog.Logger
	// Now is the clock of the cache. Default time.Now.
	Now func() time.Time
}

// Guard is a fleetlock.Locker that checks who is asking before it passes a request on
// to the Locker it wraps. It is also a prometheus.Collector of
// rebootmanager_access_refused_total{reason}.
type Guard struct {
	next    fleetlock.Locker
	opts    Options
	log     *slog.Logger
	verify  *verifier
	refused *prometheus.CounterVec
}

var (
	_ fleetlock.Locker            = (*Guard)(nil)
	_ fleetlock.QuickSteadyStater = (*Guard)(nil)
	_ prometheus.Collector        = (*Guard)(nil)
)

// NewGuard returns a Guard in front of next.
func NewGuard(next fleetlock.Locker, opts Options) *Guard {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.MaxQueuedChecks <= 0 {
		opts.MaxQueuedChecks = DefaultMaxQueuedChecks
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Resolver == nil {
		opts.Resolver = opts.Nodes
	}
	if r, ok := next.(NodeResolver); ok && opts.Resolver == nil {
		opts.Resolver = r // the lock itself
	}
	g := &Guard{
		next: next, opts: opts, log: opts.Logger, verify: newVerifier(opts.CacheTTL, opts.Now, opts.MaxQueuedChecks),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_access_refused_total",
			Help: "FleetLock requests refused by access control, by reason: no_credentials, bad_credentials, wrong_group, wrong_node, other_group, source_address, busy.",
		}, []string{"reason"}),
	}
	// Series for the checks that are on exist from the start, at 0, so that rate()
	// and alerts see the first refusal.
	if opts.Credentials != nil {
		for _, r := range []Reason{ReasonNoCredentials, ReasonBadCredentials, ReasonWrongGroup, ReasonWrongNode, ReasonBusy} {
			g.refused.WithLabelValues(string(r))
		}
	}
	if opts.Resolver != nil {
		g.refused.WithLabelValues(string(ReasonOtherGroup))
	}
	if opts.Nodes != nil {
		g.refused.WithLabelValues(string(ReasonSourceAddress))
	}
	return g
}

// Describe implements prometheus.Collector.
func (g *Guard) Describe(ch chan<- *prometheus.Desc) { g.refused.Describe(ch) }

// Collect implements prometheus.Collector.
func (g *Guard) Collect(ch chan<- prometheus.Metric) { g.refused.Collect(ch) }

// PreReboot checks the request and, if it passes, asks the wrapped Locker. It never
// returns nil (reboot now) for a request that did not pass every check.
func (g *Guard) PreReboot(ctx context.Context, p fleetlock.ClientParams) error {
	unchecked, err := g.admit(ctx, "pre-reboot", p)
	if err != nil {
		return err
	}
	err = g.next.PreReboot(ctx, p)
	if err == nil && unchecked {
		// The ID matched no node when the guard looked and one when the lock did: the
		// node was never checked. Do not let it reboot; the lock it now holds is
		// answered "reboot now" at the next request from the node.
		peer, _ := fleetlock.PeerFrom(ctx)
		reason := ReasonWrongNode
		if g.opts.Nodes != nil {
			reason = ReasonSourceAddress
		}
		return g.refuse(ctx, "pre-reboot", p, peer, reason, "the node could not be checked; ask again")
	}
	return err
}

// SteadyState checks the request and, if it passes, asks the wrapped Locker.
func (g *Guard) SteadyState(ctx context.Context, p fleetlock.ClientParams) (bool, error) {
	if _, err := g.admit(ctx, "steady-state", p); err != nil {
		return false, err
	}
	return g.next.SteadyState(ctx, p)
}

// SteadyStateQuick answers at once when no check can block (no Credentials: their
// password checks may wait for a CPU) and the wrapped Locker can answer at once too
// (fleetlock.QuickSteadyStater); ok is false otherwise, and nothing was refused or
// counted. A request the checks refuse is refused here as SteadyState would.
func (g *Guard) SteadyStateQuick(ctx context.Context, p fleetlock.ClientParams) (released, ok bool, err error) {
	next, quick := g.next.(fleetlock.QuickSteadyStater)
	if !quick || g.opts.Credentials != nil {
		return false, false, nil
	}
	if _, err := g.admit(ctx, "steady-state", p); err != nil {
		return false, true, err
	}
	return next.SteadyStateQuick(ctx, p)
}

// admit runs the checks. unchecked reports that the node could not be checked
// because the ID matches no node or several (or the cache has not synced): the
// wrapped Locker answers that.
func (g *Guard) admit(ctx context.Context, endpoint string, p fleetlock.ClientParams) (unchecked bool, err error) {
	if g.opts.Credentials == nil && g.opts.Resolver == nil {
		return false, nil
	}
	peer, _ := fleetlock.PeerFrom(ctx) // without one, every check fails
	var entries []Entry
	if g.opts.Credentials != nil {
		if entries, err = g.authenticate(ctx, endpoint, p, peer); err != nil {
			return false, err
		}
	}
	var node *corev1.Node
	if g.opts.Resolver != nil {
		// Unknown, ambiguous, or the cache is not ready: the lock gives the same answer
		// without the guard, and the guard says nothing more about which nodes exist.
		node, _ = g.opts.Resolver.Resolve(p.ID)
		unchecked = node == nil
	}
	if g.opts.Credentials != nil {
		if err := g.authorize(ctx, endpoint, p, peer, entries, node); err != nil {
			return false, err
		}
	}
	if node == nil {
		return unchecked, nil
	}
	// Only a hold: a claim lives while a request works on it, and the node's own
	// request in another group replaces it (a stale one included).
	// The group annotation is looked up only for a hold: most requests are for nodes
	// that hold nothing.
	if node.Annotations[lock.AnnotationStatus] == string(lock.StateRebooting) {
		if held := node.Annotations[lock.AnnotationGroup]; held != p.Group {
			return false, g.refuse(ctx, endpoint, p, peer, ReasonOtherGroup,
				fmt.Sprintf("the node holds a slot of group %q, not %q: a request in another group neither releases nor re-grants it "+
					"(if the node's group changed while it held, an operator releases it: reboot-manager release)", held, p.Group),
				"node", node.Name, "heldGroup", held)
		}
	}
	if g.opts.Nodes == nil {
		return false, nil
	}
	client, err := clientAddress(peer.RemoteAddr, peer.ForwardedFor, g.opts.TrustedProxies)
	if err != nil {
		return false, g.refuse(ctx, endpoint, p, peer, ReasonSourceAddress,
			fmt.Sprintf("cannot tell the client address: %v", err), "node", node.Name)
	}
	if !nodeHasAddress(node, client) {
		return false, g.refuse(ctx, endpoint, p, peer, ReasonSourceAddress,
			fmt.Sprintf("request from %s, which is not an address of the node with this ID", client),
			"node", node.Name, "client", client.String())
	}
	return false, nil
}

// authenticate checks the Basic credentials of peer and returns the user's lines.
func (g *Guard) authenticate(ctx context.Context, endpoint string, p fleetlock.ClientParams, peer fleetlock.Peer) ([]Entry, error) {
	if !peer.HasBasicAuth {
		return nil, g.refuse(ctx, endpoint, p, peer, ReasonNoCredentials,
			"credentials required: put user:password@ in Zincati's base_url")
	}
	entries, err := g.opts.Credentials.Credentials().authenticate(ctx, g.verify, peer.Username, peer.Password)
	switch {
	case errors.Is(err, fleetlock.ErrTooManyRequests):
		return nil, g.refuse(ctx, endpoint, p, peer, ReasonBusy, err.Error())
	case err != nil:
		return nil, err // the request ended while waiting: api_unavailable
	case len(entries) == 0:
		return nil, g.refuse(ctx, endpoint, p, peer, ReasonBadCredentials, "wrong user name or password")
	}
	return entries, nil
}

// authorize checks that one of the user's lines is for the request's group and
// selects its node. With node nil (unknown), only a line for every node does; but
// when the ID matches no node, the request passes unchecked if a line is for the
// group: the lock then answers it (unknown_node), and PreReboot refuses a grant.
func (g *Guard) authorize(ctx context.Context, endpoint string, p fleetlock.ClientParams, peer fleetlock.Peer, entries []Entry, node *corev1.Node) error {
	forGroup := false
	for i := range entries {
		groupOK, nodeOK := entries[i].matches(p.Group, node)
		if groupOK && nodeOK {
			return nil
		}
		forGroup = forGroup || groupOK
	}
	switch {
	case !forGroup:
		return g.refuse(ctx, endpoint, p, peer, ReasonWrongGroup,
			fmt.Sprintf("user %q may not act for group %q", peer.Username, p.Group))
	case node == nil && g.opts.Resolver != nil:
		return nil // unchecked: see above
	case node == nil:
		return g.refuse(ctx, endpoint, p, peer, ReasonWrongNode,
			fmt.Sprintf("user %q may act only for some nodes, and this server cannot look nodes up", peer.Username))
	}
	return g.refuse(ctx, endpoint, p, peer, ReasonWrongNode,
		fmt.Sprintf("user %q may not act for the node with this ID", peer.Username), "node", node.Name)
}

// refuse counts and logs a refusal and returns its error.
func (g *Guard) refuse(ctx context.Context, endpoint string, p fleetlock.ClientParams, peer fleetlock.Peer, reason Reason, msg string, attrs ...any) error {
	g.refused.WithLabelValues(string(reason)).Inc()
	g.log.InfoContext(ctx, "access refused", append([]any{
		"reason", string(reason), "endpoint", endpoint, "zincatiID", p.ID, "group", p.Group,
		"remoteAddr", peer.RemoteAddr, "forwardedFor", peer.ForwardedFor, "user", peer.Username,
	}, attrs...)...)
	return &RefusedError{Reason: reason, Msg: msg}
}

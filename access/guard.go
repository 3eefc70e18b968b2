package access

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
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
	// ReasonBadCredentials: unknown user or wrong password (401).
	ReasonBadCredentials Reason = "bad_credentials"
	// ReasonWrongGroup: right password, but not for the request's group (403).
	ReasonWrongGroup Reason = "wrong_group"
	// ReasonSourceAddress: the client address is not one of the node's (403).
	ReasonSourceAddress Reason = "source_address"
)

// RefusedError is what a Guard returns for a request it refuses. It matches
// fleetlock.ErrUnauthorized for the credential reasons, fleetlock.ErrForbidden for
// the others; its message is the reply's value.
type RefusedError struct {
	Reason Reason
	Msg    string
}

func (e *RefusedError) Error() string { return e.Msg }

// Is makes errors.Is match fleetlock.ErrUnauthorized or fleetlock.ErrForbidden.
func (e *RefusedError) Is(target error) bool {
	if e.Reason == ReasonNoCredentials || e.Reason == ReasonBadCredentials {
		return target == fleetlock.ErrUnauthorized
	}
	return target == fleetlock.ErrForbidden
}

// NodeResolver finds the node a Zincati ID belongs to, without an API request.
// *lock.Lock is one. The node returned is only read.
type NodeResolver interface {
	Resolve(id string) (*corev1.Node, error)
}

// Options configure a Guard. With neither Credentials nor Nodes, a Guard lets
// everything through.
type Options struct {
	// Credentials, when set, requires HTTP Basic credentials valid for the request's
	// group.
	Credentials CredentialSource
	// Nodes, when set, turns source-address verification on: a request for a node is
	// accepted only from one of the IP addresses in its status.addresses.
	Nodes NodeResolver
	// TrustedProxies are the address ranges whose X-Forwarded-For is believed; see
	// the package documentation for the rule. Only used with Nodes.
	TrustedProxies []netip.Prefix
	// CacheTTL is how long a successful password check is remembered. Default
	// DefaultCacheTTL.
	CacheTTL time.Duration
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
	_ fleetlock.Locker     = (*Guard)(nil)
	_ prometheus.Collector = (*Guard)(nil)
)

// NewGuard returns a Guard in front of next.
func NewGuard(next fleetlock.Locker, opts Options) *Guard {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Guard{
		next: next, opts: opts, log: opts.Logger, verify: newVerifier(opts.CacheTTL, opts.Now),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rebootmanager_access_refused_total",
			Help: "FleetLock requests refused by access control, by reason: no_credentials, bad_credentials, wrong_group, source_address.",
		}, []string{"reason"}),
	}
	// Series for the checks that are on exist from the start, at 0, so that rate()
	// and alerts see the first refusal.
	if opts.Credentials != nil {
		for _, r := range []Reason{ReasonNoCredentials, ReasonBadCredentials, ReasonWrongGroup} {
			g.refused.WithLabelValues(string(r))
		}
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
		// address was never checked against it. Do not let the node reboot; the lock
		// it now holds is answered "reboot now" at the next request from the node.
		peer, _ := fleetlock.PeerFrom(ctx)
		return g.refuse(ctx, "pre-reboot", p, peer, ReasonSourceAddress,
			"the node's addresses could not be checked; ask again")
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

// admit runs the checks. unchecked reports that the source address could not be
// checked because the ID matches no node or several: the wrapped Locker answers that.
func (g *Guard) admit(ctx context.Context, endpoint string, p fleetlock.ClientParams) (unchecked bool, err error) {
	if g.opts.Credentials == nil && g.opts.Nodes == nil {
		return false, nil
	}
	peer, _ := fleetlock.PeerFrom(ctx) // without one, every check fails
	if g.opts.Credentials != nil {
		if err := g.authenticate(ctx, endpoint, p, peer); err != nil {
			return false, err
		}
	}
	if g.opts.Nodes == nil {
		return false, nil
	}
	node, err := g.opts.Nodes.Resolve(p.ID)
	if err != nil {
		// Unknown, ambiguous, or the cache is not ready: the lock gives the same answer
		// without the guard, and the guard says nothing more about which nodes exist.
		return true, nil
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

// authenticate checks the Basic credentials of peer for the group of p.
func (g *Guard) authenticate(ctx context.Context, endpoint string, p fleetlock.ClientParams, peer fleetlock.Peer) error {
	if !peer.HasBasicAuth {
		return g.refuse(ctx, endpoint, p, peer, ReasonNoCredentials,
			"credentials required: put user:password@ in Zincati's base_url")
	}
	res, err := g.opts.Credentials.Credentials().authenticate(ctx, g.verify, peer.Username, peer.Password, p.Group)
	switch {
	case err != nil:
		return err // the request ended while waiting: api_unavailable
	case res == authWrongGroup:
		return g.refuse(ctx, endpoint, p, peer, ReasonWrongGroup,
			fmt.Sprintf("user %q may not act for group %q", peer.Username, p.Group))
	case res != authOK:
		return g.refuse(ctx, endpoint, p, peer, ReasonBadCredentials, "wrong user name or password")
	}
	return nil
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

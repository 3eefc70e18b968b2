package fleetlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Locker is the lock side the handler depends on. Both methods may be called
// again for the same node (Zincati retries), so they must be idempotent.
type Locker interface {
	// PreReboot returns nil only when the node may reboot now.
	PreReboot(ctx context.Context, p ClientParams) error
	// SteadyState releases the lock the node holds, if any; released reports whether it held one.
	SteadyState(ctx context.Context, p ClientParams) (released bool, err error)
}

// QuickSteadyStater is a Locker that can answer some steady-state requests at once:
// without blocking, without an API request, and with the answer SteadyState would
// give. The handler asks it first and calls SteadyState, through the sharing and the
// bounds of held requests, only when ok is false. Most check-ins of a fleet are of
// nodes that hold nothing, answered from a cache: the hand-off to a worker that
// SteadyState gets costs more than the answer.
type QuickSteadyStater interface {
	SteadyStateQuick(ctx context.Context, p ClientParams) (released, ok bool, err error)
}

// Peer is what the handler knows of the party behind a request, beyond its body.
// The handler stores it in the context it passes to the Locker; read it with
// PeerFrom. This package only carries it: deciding who may ask is the Locker's
// business. Its String, GoString and LogValue methods leave the password out.
type Peer struct {
	// RemoteAddr is the TCP peer, "IP:port" (http.Request.RemoteAddr).
	RemoteAddr string
	// ForwardedFor is the X-Forwarded-For header, its lines joined with ", " in
	// order, or "" without one. Anyone can send it: believe it only from a
	// proxy you trust.
	ForwardedFor string
	// Username and Password are the HTTP Basic credentials, when HasBasicAuth.
	Username, Password string
	// HasBasicAuth reports whether the request carried an Authorization
	// header with well-formed Basic credentials.
	HasBasicAuth bool
	// TLS reports whether the request came over TLS.
	TLS bool
}

// String describes p without its password.
func (p Peer) String() string {
	return fmt.Sprintf("{RemoteAddr:%s ForwardedFor:%q Username:%q HasBasicAuth:%t TLS:%t}",
		p.RemoteAddr, p.ForwardedFor, p.Username, p.HasBasicAuth, p.TLS)
}

// GoString is String, so that %#v does not print the password either.
func (p Peer) GoString() string { return "fleetlock.Peer" + p.String() }

// LogValue implements slog.LogValuer, without the password.
func (p Peer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("remoteAddr", p.RemoteAddr), slog.String("forwardedFor", p.ForwardedFor),
		slog.String("username", p.Username), slog.Bool("hasBasicAuth", p.HasBasicAuth), slog.Bool("tls", p.TLS))
}

// peerKey is the context key of the Peer.
type peerKey struct{}

// ContextWithPeer returns ctx carrying p. The handler calls it for every
// request; it is exported for Lockers tested or called without the handler.
func ContextWithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the Peer of the request ctx belongs to; ok is false when
// ctx carries none (the Locker was not called by the handler).
func PeerFrom(ctx context.Context) (p Peer, ok bool) {
	p, ok = ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// peerOf extracts the Peer of r.
func peerOf(r *http.Request) Peer {
	p := Peer{
		RemoteAddr:   r.RemoteAddr,
		ForwardedFor: strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
		TLS:          r.TLS != nil,
	}
	p.Username, p.Password, p.HasBasicAuth = r.BasicAuth()
	return p
}

// Options configures NewHandler. The zero value is valid.
type Options struct {
	// PathPrefix is mounted before /v1/..., e.g. "/fleetlock". Default "" (root).
	// A missing leading slash is added and a trailing slash removed; it must
	// be a literal path (no chi patterns such as "{x}" or "*").
	PathPrefix string
	// Logger receives request logs. Default nil: discard.
	Logger *slog.Logger
	// MaxBodyBytes bounds the request body. Default (<= 0): 4096.
	MaxBodyBytes int64
	// RetryAfter is sent as Retry-After (whole seconds, at least 1) with
	// api_unavailable. Default (<= 0): 10s.
	RetryAfter time.Duration
	// MaxRequestsPerNode bounds the requests held at once for one client ID, shared
	// or not; past it a request is answered too_many_requests (429) at once. Default
	// (<= 0): DefaultMaxRequestsPerNode.
	MaxRequestsPerNode int
	// MaxRequestsPerConnection bounds the requests held at once on one HTTP/2
	// connection; past it a request is answered too_many_requests (429) at once.
	// Behind a proxy that carries many nodes' requests over one HTTP/2 connection,
	// raise it above the number of nodes that may ask at once. Default (<= 0):
	// DefaultMaxRequestsPerConnection.
	MaxRequestsPerConnection int
	// Registerer receives the metrics rebootmanager_fleetlock_requests_total
	// {endpoint,kind} and rebootmanager_fleetlock_request_duration_seconds
	// {endpoint}, endpoint being pre-reboot, steady-state or other (unknown
	// path or wrong method). Default nil:
	// no metrics. Collectors already registered there are reused; any other
	// registration error panics.
	Registerer prometheus.Registerer
}

// authChallenge is the WWW-Authenticate header of unauthorized replies.
const authChallenge = `Basic realm="reboot-manager"`

// Endpoint label values.
const (
	endpointPreReboot   = "pre-reboot"
	endpointSteadyState = "steady-state"
	endpointOther       = "other"
)

// handler serves the FleetLock routes.
type handler struct {
	locker     Locker
	share      *sharer
	log        *slog.Logger
	maxBody    int64
	retryAfter string
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	// counters and observers are requests' and duration's children, by endpoint
	// (endpoints' index) and kind (kinds' index), made at their first use.
	counters  [len(endpoints)][]atomic.Pointer[prometheus.Counter]
	observers [len(endpoints)]atomic.Pointer[prometheus.Observer]
}

// endpoints are the endpoint label values, in the order of handler.counters.
var endpoints = [...]string{endpointPreReboot, endpointSteadyState, endpointOther}

// endpointFunc handles one request, whose context is ctx, and returns the node's
// params (when known), the success kind, and the error, if any.
type endpointFunc func(ctx context.Context, r *http.Request) (ClientParams, Kind, error)

// NewHandler returns the FleetLock v1 HTTP handler: POST
// <PathPrefix>/v1/pre-reboot and POST <PathPrefix>/v1/steady-state, backed by l.
// It never redirects and always answers a JSON Reply.
func NewHandler(l Locker, opts Options) http.Handler {
	if opts.MaxRequestsPerNode <= 0 {
		opts.MaxRequestsPerNode = DefaultMaxRequestsPerNode
	}
	if opts.MaxRequestsPerConnection <= 0 {
		opts.MaxRequestsPerConnection = DefaultMaxRequestsPerConnection
	}
	h := &handler{locker: l, log: opts.Logger, maxBody: opts.MaxBodyBytes,
		share: newSharer(opts.MaxRequestsPerNode, opts.MaxRequestsPerConnection)}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.maxBody <= 0 {
		h.maxBody = 4 << 10
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 10 * time.Second
	}
	h.retryAfter = strconv.Itoa(max(1, int((opts.RetryAfter+time.Second-1)/time.Second)))
	if opts.Registerer != nil {
		h.registerMetrics(opts.Registerer)
	}
	prefix := strings.TrimSuffix("/"+strings.TrimPrefix(opts.PathPrefix, "/"), "/")
	rt := &router{mux: chi.NewRouter(),
		preRebootPath: prefix + "/v1/pre-reboot", preReboot: h.wrap(0, h.preReboot),
		steadyStatePath: prefix + "/v1/steady-state", steadyState: h.wrap(1, h.steadyState)}
	rt.mux.Post(rt.preRebootPath, rt.preReboot)
	rt.mux.Post(rt.steadyStatePath, rt.steadyState)
	rt.mux.NotFound(h.wrap(2, fail(fmt.Errorf("%w: the FleetLock endpoints are POST %s and POST %s; Zincati's base_url is the part before v1/ and must end with a slash",
		errNotFound, rt.preRebootPath, rt.steadyStatePath))))
	rt.mux.MethodNotAllowed(h.wrap(2, fail(errMethodNotAllowed)))
	return rt
}

// router is the chi router of the routes, with a shortcut for the requests it
// routes most: a POST to one of the two paths, spelled without escapes, not
// routed by an enclosing chi router. chi would route those to the same handlers.
type router struct {
	mux                            *chi.Mux
	preRebootPath, steadyStatePath string
	preReboot, steadyState         http.HandlerFunc
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.RawPath == "" && chi.RouteContext(r.Context()) == nil {
		switch r.URL.Path {
		case rt.steadyStatePath:
			rt.steadyState(w, r)
			return
		case rt.preRebootPath:
			rt.preReboot(w, r)
			return
		}
	}
	rt.mux.ServeHTTP(w, r)
}

// fail returns an endpointFunc that always fails with err.
func fail(err error) endpointFunc {
	return func(context.Context, *http.Request) (ClientParams, Kind, error) { return ClientParams{}, "", err }
}

// params checks the header and decodes the body of a FleetLock request.
func (h *handler) params(r *http.Request) (ClientParams, error) {
	if err := checkHeader(r.Header); err != nil {
		return ClientParams{}, err
	}
	buf := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(buf)
	b, err := readBody(r.Body, h.maxBody, *buf)
	if err != nil {
		return ClientParams{}, err
	}
	*buf = b[:0]            // keep a grown array
	return decodeRequest(b) // copies what it keeps
}

// bodyBuffers hold request bodies while they are decoded.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (h *handler) preReboot(ctx context.Context, r *http.Request) (ClientParams, Kind, error) {
	p, err := h.params(r)
	if err == nil {
		_, err = h.share.do(ctx, endpointPreReboot, p, connOf(r), func(ctx context.Context) (bool, error) {
			return false, h.locker.PreReboot(ctx, p)
		})
	}
	return p, KindLockGranted, err
}

func (h *handler) steadyState(ctx context.Context, r *http.Request) (ClientParams, Kind, error) {
	p, err := h.params(r)
	if err != nil {
		return p, "", err
	}
	var released, ok bool
	if q, quick := h.locker.(QuickSteadyStater); quick {
		if err = recovered(func() (err error) { released, ok, err = q.SteadyStateQuick(ctx, p); return err }); err != nil {
			ok = true
		}
	}
	if !ok {
		released, err = h.share.do(ctx, endpointSteadyState, p, connOf(r), func(ctx context.Context) (bool, error) {
			return h.locker.SteadyState(ctx, p)
		})
	}
	if released {
		return p, KindLockReleased, err
	}
	return p, KindLockNotHeld, err
}

// connOf names the HTTP/2 connection of r by its remote address, or is "" for
// HTTP/1, whose connections carry one request at a time.
func connOf(r *http.Request) string {
	if r.ProtoMajor < 2 {
		return ""
	}
	return r.RemoteAddr
}

// wrap turns fn into an http.HandlerFunc that writes the Reply, logs and
// records metrics; e is the endpoint's index in endpoints.
func (h *handler) wrap(e int, fn endpointFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := ContextWithPeer(r.Context(), peerOf(r))
		p, success, err := fn(ctx, r)
		row, rep := outcomeRow(success, err)
		h.write(w, kinds[row].status, rep)
		h.logRequest(ctx, endpoints[e], p, rep, err)
		if h.requests != nil {
			h.counter(e, row).Inc()
			h.observer(e).Observe(time.Since(start).Seconds())
		}
	}
}

// counter returns the requests counter of endpoint e and kind row.
func (h *handler) counter(e, row int) prometheus.Counter {
	if c := h.counters[e][row].Load(); c != nil {
		return *c
	}
	c := h.requests.WithLabelValues(endpoints[e], string(kinds[row].kind))
	h.counters[e][row].Store(&c)
	return c
}

// observer returns the duration histogram of endpoint e.
func (h *handler) observer(e int) prometheus.Observer {
	if o := h.observers[e].Load(); o != nil {
		return *o
	}
	o := h.duration.WithLabelValues(endpoints[e])
	h.observers[e].Store(&o)
	return o
}

// recovered calls the Locker through fn, turning a panic into an error.
func recovered(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("panic: %v\n%s", v, debug.Stack())
		}
	}()
	return fn()
}

// write sends rep as JSON with status and the kind's extra headers.
func (h *handler) write(w http.ResponseWriter, status int, rep Reply) {
	hd := w.Header()
	// Assigned rather than Set: the keys are canonical and the values shared
	// (net/http only reads them).
	hd["Content-Type"] = contentTypeJSON
	hd["Cache-Control"] = cacheControlNoStore
	switch rep.Kind {
	case KindMethodNotAllowed:
		hd.Set("Allow", http.MethodPost)
	case KindAPIUnavailable, KindTooManyRequests:
		hd.Set("Retry-After", h.retryAfter)
	case KindUnauthorized:
		hd.Set("WWW-Authenticate", authChallenge)
	}
	w.WriteHeader(status)
	// The client is gone if writing fails.
	if b := encodedReply(rep); b != nil {
		_, _ = w.Write(b)
		return
	}
	_ = json.NewEncoder(w).Encode(rep)
}

// Header values of every reply.
var (
	contentTypeJSON     = []string{"application/json"}
	cacheControlNoStore = []string{"no-store"}
)

// logRequest logs one request: internal_error at error level,
// api_unavailable at warn, the rest at debug.
func (h *handler) logRequest(ctx context.Context, endpoint string, p ClientParams, rep Reply, err error) {
	level := slog.LevelDebug
	switch rep.Kind {
	case KindInternalError:
		level = slog.LevelError
	case KindAPIUnavailable:
		level = slog.LevelWarn
	}
	if !h.log.Enabled(ctx, level) {
		return // before building the attributes, which allocate
	}
	attrs := []slog.Attr{slog.String("endpoint", endpoint), slog.String("zincatiID", p.ID),
		slog.String("group", p.Group), slog.String("kind", string(rep.Kind))}
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	h.log.LogAttrs(ctx, level, "fleetlock request", attrs...)
}

// registerMetrics creates the collectors on reg, reusing registered ones.
// DurationBuckets are the upper bounds, in seconds, of the request-duration
// histogram: from a millisecond (an answer from the cache) to Zincati's 30-minute
// request timeout (a pre-reboot held open while the node waits for a slot).
var DurationBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1500, 1800}

func (h *handler) registerMetrics(reg prometheus.Registerer) {
	for e := range h.counters {
		h.counters[e] = make([]atomic.Pointer[prometheus.Counter], len(kinds))
	}
	h.requests = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rebootmanager_fleetlock_requests_total",
		Help: "FleetLock requests by endpoint and reply kind.",
	}, []string{"endpoint", "kind"}))
	h.duration = register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rebootmanager_fleetlock_request_duration_seconds",
		Help:    "FleetLock request handling time by endpoint, including the time a request is held open.",
		Buckets: DurationBuckets,
	}, []string{"endpoint"}))
}

// register registers c on reg, or returns the equal collector already there.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			panic(fmt.Errorf("fleetlock: registering metrics: %w", err))
		}
		return are.ExistingCollector.(C)
	}
	return c
}

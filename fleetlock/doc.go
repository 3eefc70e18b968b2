// Package fleetlock is the FleetLock v1 wire protocol of reboot-manager: the
// HTTP handler Zincati (the Fedora CoreOS update agent) talks to before and
// after rebooting, the Locker interface it calls, a Client that speaks exactly
// like Zincati, and the derivation of Zincati's node ID.
//
// # Glossary
//
//   - Zincati: the update agent on each node; the FleetLock client.
//   - Reboot lock: permission to reboot, granted by pre-reboot and returned
//     by steady-state. The lock side (a Locker) decides; this package only
//     carries the protocol.
//   - Client ID (client_params.id, "zincatiID" in logs): systemd's
//     app-specific machine ID for Zincati's app ID, 32 lowercase hex digits;
//     see ZincatiID.
//   - Group (client_params.group): Zincati's reboot group, "default" unless
//     configured.
//   - Kind: the machine-readable outcome in every reply; Zincati uses it as a
//     Prometheus label, so the set is small and fixed.
//
// # Routes
//
//	POST <prefix>/v1/pre-reboot    ask for the reboot lock; 2xx means "reboot now"
//	POST <prefix>/v1/steady-state  the node booted fine; release its lock, if any
//
// <prefix> is Options.PathPrefix ("" by default). Paths match exactly: a
// trailing slash, a double slash or a dot segment is not_found. The handler
// never redirects (no 3xx). Another method on a known path is
// method_not_allowed with "Allow: POST".
//
// # Request rules
//
// The header fleet-lock-protocol must appear once with value "true"; spaces
// and tabs around it are trimmed and case is ignored ("True", " TRUE " pass).
// Content-Type and User-Agent are ignored: Zincati sends neither.
//
// The body, at most Options.MaxBodyBytes (4 KiB by default), as Zincati sends
// it (pretty-printed):
//
//	{
//	  "client_params": {
//	    "id": "978a225b3d7b40e9acd7ce9b62f68444",
//	    "group": "default"
//	  }
//	}
//
// It must be valid UTF-8 holding exactly one JSON object and nothing after it
// but white space. client_params must be an object; id and group must be
// strings. Keys are matched case-sensitively ("ID" is an unknown key, so id is
// then missing). Unknown keys are ignored, but a key repeated in the top
// object or in client_params is rejected, so that a proxy and this server
// cannot read different IDs. id must be non-empty and at most MaxIDBytes
// bytes; it is case-sensitive. group must be non-empty, at most MaxGroupBytes
// bytes and match ^[a-zA-Z0-9.-]+$. A violation is invalid_request whose value
// names the field, e.g. "client_params.group: must match ^[a-zA-Z0-9.-]+$".
//
// # Replies
//
// Every reply, success included, has Content-Type application/json and the
// body {"kind": "...", "value": "..."} with both fields non-empty. Zincati
// treats every 2xx as success, so every "not yet" is non-2xx:
//
//	kind                status  when
//	lock_granted        200     pre-reboot: Locker.PreReboot returned nil
//	lock_released       200     steady-state: the node's lock was released
//	lock_not_held       200     steady-state: the node held no lock
//	unauthorized        401     ErrUnauthorized; header WWW-Authenticate:
//	                            Basic realm="reboot-manager"
//	forbidden           403     ErrForbidden
//	lock_held           409     ErrLockHeld
//	drain_in_progress   409     ErrDrainInProgress
//	drain_blocked       409     ErrDrainBlocked
//	paused              409     ErrPaused
//	node_held           409     ErrNodeHeld
//	window_closed       409     ErrWindowClosed
//	reboot_gap          409     ErrRebootGap
//	alert_firing        409     ErrAlertFiring
//	blocker_check_failing 409   ErrBlockerCheckFailing
//	pods_blocking       409     ErrPodsBlocking
//	group_not_ready     409     ErrGroupNotReady
//	group_order         409     ErrGroupOrder (pre-reboot)
//	node_not_ready      409     ErrNodeNotReady (steady-state)
//	node_uncordoned     409     ErrNodeUncordoned (pre-reboot)
//	node_gone           422     ErrNodeGone (pre-reboot)
//	unknown_node        422     ErrUnknownNode
//	ambiguous_node      422     ErrAmbiguousNode
//	invalid_request     400     bad header or body
//	method_not_allowed  405     not POST on a known path; header Allow: POST
//	not_found           404     unknown path
//	body_too_large      413     body over Options.MaxBodyBytes
//	too_many_requests   429     ErrTooManyRequests; header Retry-After
//	api_unavailable     503     ErrUnavailable, context.Canceled or
//	                            context.DeadlineExceeded; header Retry-After
//	                            (Options.RetryAfter, 10 s by default)
//	internal_error      500     any other Locker error, or a Locker panic
//
// A Locker error is matched with errors.Is against the sentinels in the order
// above, so it may wrap one with %w or be a typed error with an Is method; the
// reply value is its message. Context errors count as api_unavailable, not
// internal_error: they mean the request (or a call the Locker made) ran out of
// time or was abandoned, which is transient, and a 503 never grants a reboot.
// internal_error replies carry a fixed value; the error itself is only
// logged. All replies are computed by one function (outcome) from one table
// (kinds); adding a kind means adding a constant, a sentinel and a row.
//
// # One node, one piece of work
//
// Requests that cannot be told apart — the same endpoint, the same client_params,
// the same Peer but for the TCP port (a retrying client, a proxy, HTTP/2 streams)
// — share one Locker call while it runs, and all get its answer: the API cost does
// not grow with duplicates. The call runs with a context that keeps the first
// request's values (its Peer) but does not end with that request alone; it ends when
// every request waiting for it has ended. A request arriving after the answer makes
// a new call. Requests that differ in anything the Locker could see (group,
// credentials, address) make their own calls.
//
// At most Options.MaxRequestsPerNode requests are held at once for one client ID
// (64 by default), and at most Options.MaxRequestsPerConnection on one HTTP/2
// connection (100 by default; Go's HTTP/2 server also refuses more than 250
// concurrent streams per connection). Past either, a request is answered
// too_many_requests (429, with Retry-After) at once.
//
// A Locker that implements QuickSteadyStater answers steady-state at once when it
// can (a node that holds nothing): such an answer is given without the sharing
// and outside those bounds, since nothing is held.
//
// # Peer
//
// The handler does not decide who may ask: the Locker does. Before calling it,
// the handler puts what it knows of the requester beyond the body into the
// context, as a Peer: the TCP peer address, the X-Forwarded-For header, the
// HTTP Basic credentials and whether the request came over TLS. A Locker reads
// it with PeerFrom and refuses with an error wrapping ErrUnauthorized (no or
// wrong credentials) or ErrForbidden (known, but not allowed). Peer never
// prints its password.
//
// # Base URL
//
// Zincati resolves "v1/pre-reboot" against its configured base_url with
// RFC 3986 reference resolution (Rust's Url::join), so the trailing slash
// matters:
//
//	http://h/fleetlock/  ->  http://h/fleetlock/v1/pre-reboot
//	http://h/fleetlock   ->  http://h/v1/pre-reboot   (prefix silently dropped)
//
// With Options.PathPrefix "/fleetlock", configure Zincati with the trailing
// slash. Client resolves BaseURL the same way.
//
// Zincati (its HTTP library, reqwest) sends the user:password@ of base_url as
// HTTP Basic credentials, percent-decoded, and removes it from the URL; Client
// does the same.
//
// # Logs and metrics
//
// One log line per request with the constant message "fleetlock request" and
// keys endpoint, zincatiID, group, kind and err: internal_error at error level,
// api_unavailable at warn, everything else at debug. See Options.Registerer
// for metrics.
package fleetlock

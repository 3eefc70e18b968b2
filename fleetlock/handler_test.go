package fleetlock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testID = "978a225b3d7b40e9acd7ce9b62f68444"
	// validBody is byte for byte what Zincati sends.
	validBody = "{\n  \"client_params\": {\n    \"id\": \"" + testID + "\",\n    \"group\": \"default\"\n  }\n}"
)

var validHeader = http.Header{"Fleet-Lock-Protocol": {"true"}}

// stubLocker answers with err (and released) and records what it was asked.
type stubLocker struct {
	err       error
	released  bool
	panicWith any
	calls     int
	got       ClientParams
}

func (s *stubLocker) PreReboot(_ context.Context, p ClientParams) error {
	s.calls++
	s.got = p
	if s.panicWith != nil {
		panic(s.panicWith)
	}
	return s.err
}

func (s *stubLocker) SteadyState(ctx context.Context, p ClientParams) (bool, error) {
	return s.released, s.PreReboot(ctx, p)
}

// serve sends one request to h and returns the recorded response.
func serve(h http.Handler, method, path string, hdr http.Header, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header = hdr.Clone()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// assertReply checks status, kind, JSON content type and a strict Reply body.
func assertReply(t *testing.T, rec *httptest.ResponseRecorder, status int, kind Kind) Reply {
	t.Helper()
	assert.Equal(t, status, rec.Code, rec.Body.String())
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var rep Reply
	d := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	d.DisallowUnknownFields()
	require.NoError(t, d.Decode(&rep), rec.Body.String())
	assert.Equal(t, kind, rep.Kind, rep.Value)
	assert.NotEmpty(t, rep.Value)
	return rep
}

func TestHandlerTransport(t *testing.T) {
	with := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	fl := "Fleet-Lock-Protocol"
	tests := []struct {
		name   string
		prefix string
		method string
		path   string
		hdr    http.Header
		body   string
		status int
		kind   Kind
		value  string // substring of the reply value
	}{
		// methods
		{"post", "", "POST", "/v1/pre-reboot", validHeader, validBody, 200, KindLockGranted, ""},
		{"get", "", "GET", "/v1/pre-reboot", validHeader, "", 405, KindMethodNotAllowed, "POST"},
		{"put", "", "PUT", "/v1/steady-state", validHeader, validBody, 405, KindMethodNotAllowed, ""},
		{"delete", "", "DELETE", "/v1/pre-reboot", validHeader, "", 405, KindMethodNotAllowed, ""},
		{"head", "", "HEAD", "/v1/pre-reboot", validHeader, "", 405, KindMethodNotAllowed, ""},
		{"options", "", "OPTIONS", "/v1/steady-state", validHeader, "", 405, KindMethodNotAllowed, ""},
		{"patch", "", "PATCH", "/v1/pre-reboot", validHeader, validBody, 405, KindMethodNotAllowed, ""},
		{"get unknown path", "", "GET", "/metrics", validHeader, "", 404, KindNotFound, ""},
		// paths
		{"trailing slash", "", "POST", "/v1/pre-reboot/", validHeader, validBody, 404, KindNotFound, ""},
		{"root", "", "POST", "/", validHeader, validBody, 404, KindNotFound, "POST /v1/pre-reboot and POST /v1/steady-state; Zincati's base_url"},
		{"v1", "", "POST", "/v1", validHeader, validBody, 404, KindNotFound, ""},
		{"v1 slash", "", "POST", "/v1/", validHeader, validBody, 404, KindNotFound, ""},
		{"upper case path", "", "POST", "/V1/pre-reboot", validHeader, validBody, 404, KindNotFound, ""},
		{"double slash", "", "POST", "//v1/pre-reboot", validHeader, validBody, 404, KindNotFound, ""},
		{"dot segment", "", "POST", "/x/../v1/pre-reboot", validHeader, validBody, 404, KindNotFound, ""},
		{"encoded slash", "", "POST", "/v1%2Fpre-reboot", validHeader, validBody, 404, KindNotFound, ""},
		{"query ignored", "", "POST", "/v1/steady-state?x=1", validHeader, validBody, 200, KindLockNotHeld, ""},
		{"prefix", "/fleetlock", "POST", "/fleetlock/v1/pre-reboot", validHeader, validBody, 200, KindLockGranted, ""},
		{"prefix steady", "fleetlock/", "POST", "/fleetlock/v1/steady-state", validHeader, validBody, 200, KindLockNotHeld, ""},
		{"prefix missing", "/fleetlock", "POST", "/v1/pre-reboot", validHeader, validBody, 404, KindNotFound, "the FleetLock endpoints are POST /fleetlock/v1/pre-reboot and POST /fleetlock/v1/steady-state"},
		{"prefix alone", "/fleetlock", "POST", "/fleetlock/", validHeader, validBody, 404, KindNotFound, ""},
		{"prefix trailing slash", "/fleetlock", "POST", "/fleetlock/v1/pre-reboot/", validHeader, validBody, 404, KindNotFound, ""},
		{"prefix wrong method", "/fleetlock", "GET", "/fleetlock/v1/pre-reboot", validHeader, "", 405, KindMethodNotAllowed, ""},
		// header
		{"header missing", "", "POST", "/v1/pre-reboot", with(), validBody, 400, KindInvalidRequest, "fleet-lock-protocol header"},
		{"header false", "", "POST", "/v1/pre-reboot", with(fl, "false"), validBody, 400, KindInvalidRequest, "fleet-lock-protocol"},
		{"header empty", "", "POST", "/v1/pre-reboot", with(fl, ""), validBody, 400, KindInvalidRequest, "fleet-lock-protocol"},
		{"header 1", "", "POST", "/v1/pre-reboot", with(fl, "1"), validBody, 400, KindInvalidRequest, "fleet-lock-protocol"},
		{"header list", "", "POST", "/v1/pre-reboot", with(fl, "true, true"), validBody, 400, KindInvalidRequest, "fleet-lock-protocol"},
		{"header twice", "", "POST", "/v1/pre-reboot", with(fl, "true", fl, "true"), validBody, 400, KindInvalidRequest, "fleet-lock-protocol"},
		{"header True", "", "POST", "/v1/pre-reboot", with(fl, "True"), validBody, 200, KindLockGranted, ""},
		{"header spaces", "", "POST", "/v1/pre-reboot", with(fl, " TRUE\t"), validBody, 200, KindLockGranted, ""},
		{"header checked before body", "", "POST", "/v1/pre-reboot", with(), "nope", 400, KindInvalidRequest, "fleet-lock-protocol"},
		// content type is never required nor interpreted
		{"json content type", "", "POST", "/v1/pre-reboot", with(fl, "true", "Content-Type", "application/json"), validBody, 200, KindLockGranted, ""},
		{"odd content type", "", "POST", "/v1/pre-reboot", with(fl, "true", "Content-Type", "text/x-zincati; charset=latin1"), validBody, 200, KindLockGranted, ""},
		{"form content type", "", "POST", "/v1/pre-reboot", with(fl, "true", "Content-Type", "application/x-www-form-urlencoded"), validBody, 200, KindLockGranted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(NewHandler(&stubLocker{}, Options{PathPrefix: tt.prefix}), tt.method, tt.path, tt.hdr, tt.body)
			rep := assertReply(t, rec, tt.status, tt.kind)
			assert.Contains(t, rep.Value, tt.value)
			assert.Empty(t, rec.Header().Get("Location"))
			if tt.status == 405 {
				assert.Equal(t, []string{"POST"}, rec.Header().Values("Allow"))
			}
		})
	}
}

func TestHandlerBody(t *testing.T) {
	params := func(inner string) string { return `{"client_params": {` + inner + `}}` }
	id257 := strings.Repeat("a", 257)
	tests := []struct {
		name  string
		body  string
		kind  Kind   // KindLockGranted or KindInvalidRequest
		value string // exact value for invalid requests
		want  ClientParams
	}{
		{"zincati", validBody, KindLockGranted, "", ClientParams{testID, "default"}},
		{"compact", params(`"id":"a","group":"g"`), KindLockGranted, "", ClientParams{"a", "g"}},
		{"unknown fields", `{"v":[1,{"a":null}],"client_params":{"x":{},"id":"A b","group":"g-1.x","y":true}}`, KindLockGranted, "", ClientParams{"A b", "g-1.x"}},
		{"trailing white space", validBody + "\n\t \r\n", KindLockGranted, "", ClientParams{testID, "default"}},
		{"escaped key", params(`"\u0069d":"a","group":"g"`), KindLockGranted, "", ClientParams{"a", "g"}},
		{"id 256 bytes", params(`"id":"` + id257[1:] + `","group":"g"`), KindLockGranted, "", ClientParams{id257[1:], "g"}},
		{"group 253 bytes", params(`"id":"a","group":"` + strings.Repeat("g", 253) + `"`), KindLockGranted, "", ClientParams{"a", strings.Repeat("g", 253)}},
		{"empty body", "", KindInvalidRequest, "body: must be a JSON object", ClientParams{}},
		{"null body", "null", KindInvalidRequest, "body: must be a JSON object", ClientParams{}},
		{"array", `[` + validBody + `]`, KindInvalidRequest, "body: must be a JSON object", ClientParams{}},
		{"string", `"x"`, KindInvalidRequest, "body: must be a JSON object", ClientParams{}},
		{"trailing object", validBody + "{}", KindInvalidRequest, "body: must hold exactly one JSON object", ClientParams{}},
		{"trailing garbage", validBody + " x", KindInvalidRequest, "body: must hold exactly one JSON object", ClientParams{}},
		{"two bodies", validBody + validBody, KindInvalidRequest, "body: must hold exactly one JSON object", ClientParams{}},
		{"truncated", `{"client_params": {"id": "a"`, KindInvalidRequest, "client_params: malformed JSON object", ClientParams{}},
		{"unclosed", `{"client_params": {"id": "a", "group": "g"}`, KindInvalidRequest, "body: malformed JSON object", ClientParams{}},
		{"bad unknown value", `{"x": [1,, 2], ` + validBody[1:], KindInvalidRequest, "x: malformed JSON value", ClientParams{}},
		{"non-string key", `{1: 2}`, KindInvalidRequest, "body: malformed JSON object", ClientParams{}},
		{"missing client_params", `{}`, KindInvalidRequest, "client_params: required", ClientParams{}},
		{"client_params null", `{"client_params": null}`, KindInvalidRequest, "client_params: must be a JSON object", ClientParams{}},
		{"client_params string", `{"client_params": "x"}`, KindInvalidRequest, "client_params: must be a JSON object", ClientParams{}},
		{"client_params array", `{"client_params": []}`, KindInvalidRequest, "client_params: must be a JSON object", ClientParams{}},
		{"duplicate client_params", `{"client_params": {"id":"a","group":"g"}, "client_params": {"id":"b","group":"g"}}`, KindInvalidRequest, `body: duplicate key "client_params"`, ClientParams{}},
		{"duplicate id", params(`"id":"a","group":"g","id":"b"`), KindInvalidRequest, `client_params: duplicate key "id"`, ClientParams{}},
		{"duplicate escaped id", params(`"id":"a","group":"g","\u0069d":"b"`), KindInvalidRequest, `client_params: duplicate key "id"`, ClientParams{}},
		{"duplicate unknown key", `{"x":1,"x":2,` + validBody[1:], KindInvalidRequest, `body: duplicate key "x"`, ClientParams{}},
		{"upper ID", params(`"ID":"a","group":"g"`), KindInvalidRequest, "client_params.id: required, must not be empty", ClientParams{}},
		{"upper Group", params(`"id":"a","Group":"g"`), KindInvalidRequest, "client_params.group: required, must not be empty", ClientParams{}},
		{"mixed-case client_params", `{"Client_Params": {"id":"a","group":"g"}}`, KindInvalidRequest, "client_params: required", ClientParams{}},
		{"id and ID", params(`"ID":"b","id":"a","group":"g"`), KindLockGranted, "", ClientParams{"a", "g"}},
		{"id null", params(`"id":null,"group":"g"`), KindInvalidRequest, "client_params.id: must be a string", ClientParams{}},
		{"id number", params(`"id":123,"group":"g"`), KindInvalidRequest, "client_params.id: must be a string", ClientParams{}},
		{"id object", params(`"id":{},"group":"g"`), KindInvalidRequest, "client_params.id: must be a string", ClientParams{}},
		{"group bool", params(`"id":"a","group":true`), KindInvalidRequest, "client_params.group: must be a string", ClientParams{}},
		{"group array", params(`"id":"a","group":["g"]`), KindInvalidRequest, "client_params.group: must be a string", ClientParams{}},
		{"id missing", params(`"group":"g"`), KindInvalidRequest, "client_params.id: required, must not be empty", ClientParams{}},
		{"id empty", params(`"id":"","group":"g"`), KindInvalidRequest, "client_params.id: required, must not be empty", ClientParams{}},
		{"group missing", params(`"id":"a"`), KindInvalidRequest, "client_params.group: required, must not be empty", ClientParams{}},
		{"group empty", params(`"id":"a","group":""`), KindInvalidRequest, "client_params.group: required, must not be empty", ClientParams{}},
		{"id too long", params(`"id":"` + id257 + `","group":"g"`), KindInvalidRequest, "client_params.id: must be at most 256 bytes", ClientParams{}},
		{"group too long", params(`"id":"a","group":"` + strings.Repeat("g", 254) + `"`), KindInvalidRequest, "client_params.group: must be at most 253 bytes", ClientParams{}},
		{"group underscore", params(`"id":"a","group":"a_b"`), KindInvalidRequest, "client_params.group: must match ^[a-zA-Z0-9.-]+$", ClientParams{}},
		{"group space", params(`"id":"a","group":"de fault"`), KindInvalidRequest, "client_params.group: must match ^[a-zA-Z0-9.-]+$", ClientParams{}},
		{"group newline", params(`"id":"a","group":"g\n"`), KindInvalidRequest, "client_params.group: must match ^[a-zA-Z0-9.-]+$", ClientParams{}},
		{"group unicode", params(`"id":"a","group":"gé"`), KindInvalidRequest, "client_params.group: must match ^[a-zA-Z0-9.-]+$", ClientParams{}},
		{"non-UTF-8 id", params("\"id\":\"a\xff\",\"group\":\"g\""), KindInvalidRequest, "body: must be valid UTF-8", ClientParams{}},
		{"non-UTF-8 unknown", "{\"\xc3\x28\":1," + validBody[1:], KindInvalidRequest, "body: must be valid UTF-8", ClientParams{}},
		{"BOM", "\xef\xbb\xbf" + validBody, KindInvalidRequest, "body: must be a JSON object", ClientParams{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &stubLocker{}
			rec := serve(NewHandler(l, Options{}), "POST", "/v1/pre-reboot", validHeader, tt.body)
			if tt.kind == KindLockGranted {
				assertReply(t, rec, 200, KindLockGranted)
				assert.Equal(t, 1, l.calls)
				assert.Equal(t, tt.want, l.got)
				return
			}
			rep := assertReply(t, rec, 400, KindInvalidRequest)
			assert.Equal(t, tt.value, rep.Value)
			assert.Zero(t, l.calls, "the Locker must not see invalid requests")
		})
	}
}

func TestHandlerBodyLimit(t *testing.T) {
	pad := func(n int) string { return validBody + strings.Repeat(" ", n-len(validBody)) }
	tests := []struct {
		max    int64
		body   string
		status int
		kind   Kind
	}{
		{0, pad(4096), 200, KindLockGranted},
		{0, pad(4097), 413, KindBodyTooLarge},
		{0, pad(1 << 20), 413, KindBodyTooLarge},
		{200, pad(200), 200, KindLockGranted},
		{200, pad(201), 413, KindBodyTooLarge},
		{int64(len(validBody) - 1), validBody, 413, KindBodyTooLarge},
	}
	for _, tt := range tests {
		l := &stubLocker{}
		rec := serve(NewHandler(l, Options{MaxBodyBytes: tt.max}), "POST", "/v1/pre-reboot", validHeader, tt.body)
		rep := assertReply(t, rec, tt.status, tt.kind)
		if tt.status == 413 {
			assert.Contains(t, rep.Value, "larger than")
			assert.Zero(t, l.calls)
		}
	}
}

func TestHandlerRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{0, "10"}, {-time.Second, "10"}, {time.Millisecond, "1"}, {1500 * time.Millisecond, "2"}, {time.Minute, "60"}} {
		h := NewHandler(&stubLocker{err: ErrUnavailable}, Options{RetryAfter: tt.d})
		rec := serve(h, "POST", "/v1/pre-reboot", validHeader, validBody)
		assertReply(t, rec, 503, KindAPIUnavailable)
		assert.Equal(t, tt.want, rec.Header().Get("Retry-After"), tt.d)
	}
}

// ctxLocker returns its context's error, as a Locker calling the API would.
type ctxLocker struct{}

func (ctxLocker) PreReboot(ctx context.Context, _ ClientParams) error { <-ctx.Done(); return ctx.Err() }
func (ctxLocker) SteadyState(ctx context.Context, _ ClientParams) (bool, error) {
	return false, ctx.Err()
}

func TestHandlerContextErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
	defer cancel()
	r := httptest.NewRequestWithContext(ctx, "POST", "/v1/pre-reboot", strings.NewReader(validBody))
	r.Header = validHeader.Clone()
	rec := httptest.NewRecorder()
	NewHandler(ctxLocker{}, Options{}).ServeHTTP(rec, r)
	rep := assertReply(t, rec, 503, KindAPIUnavailable)
	assert.Equal(t, "context deadline exceeded", rep.Value)
	assert.Equal(t, "10", rec.Header().Get("Retry-After"))
}

func TestHandlerLogs(t *testing.T) {
	tests := []struct {
		locker Locker
		path   string
		level  string
		kind   Kind
		err    string // substring of the logged err; "" means no err key
	}{
		{&stubLocker{}, "/v1/pre-reboot", "DEBUG", KindLockGranted, ""},
		{&stubLocker{err: ErrLockHeld}, "/v1/pre-reboot", "DEBUG", KindLockHeld, ErrLockHeld.Error()},
		{&stubLocker{err: errors.New("etcd on fire")}, "/v1/steady-state", "ERROR", KindInternalError, "etcd on fire"},
		{&stubLocker{panicWith: "kaboom"}, "/v1/pre-reboot", "ERROR", KindInternalError, "panic: kaboom"},
		{&stubLocker{err: ErrUnavailable}, "/v1/steady-state", "WARN", KindAPIUnavailable, ErrUnavailable.Error()},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		serve(NewHandler(tt.locker, Options{Logger: log}), "POST", tt.path, validHeader, validBody)
		var line map[string]any
		require.NoError(t, json.Unmarshal(buf.Bytes(), &line), buf.String())
		assert.Equal(t, "fleetlock request", line["msg"])
		assert.Equal(t, tt.level, line["level"])
		assert.Equal(t, testID, line["zincatiID"])
		assert.Equal(t, "default", line["group"])
		assert.Equal(t, string(tt.kind), line["kind"])
		if tt.err == "" {
			assert.NotContains(t, line, "err")
		} else {
			assert.Contains(t, line["err"], tt.err)
		}
	}
}

func TestHandlerMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h := NewHandler(&stubLocker{err: ErrLockHeld}, Options{Registerer: reg})
	h2 := NewHandler(&stubLocker{}, Options{Registerer: reg}) // shares the collectors
	serve(h, "POST", "/v1/pre-reboot", validHeader, validBody)
	serve(h, "POST", "/v1/pre-reboot", validHeader, validBody)
	serve(h2, "POST", "/v1/steady-state", validHeader, validBody)
	serve(h2, "GET", "/v1/steady-state", validHeader, "")
	serve(h2, "POST", "/nope", validHeader, "")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP rebootmanager_fleetlock_requests_total FleetLock requests by endpoint and reply kind.
# TYPE rebootmanager_fleetlock_requests_total counter
rebootmanager_fleetlock_requests_total{endpoint="other",kind="method_not_allowed"} 1
rebootmanager_fleetlock_requests_total{endpoint="other",kind="not_found"} 1
rebootmanager_fleetlock_requests_total{endpoint="pre-reboot",kind="lock_held"} 2
rebootmanager_fleetlock_requests_total{endpoint="steady-state",kind="lock_not_held"} 1
`), "rebootmanager_fleetlock_requests_total"))
	n, err := testutil.GatherAndCount(reg, "rebootmanager_fleetlock_request_duration_seconds")
	require.NoError(t, err)
	assert.Equal(t, 3, n) // pre-reboot, steady-state, other

	assert.Panics(t, func() {
		bad := prometheus.NewRegistry()
		bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "rebootmanager_fleetlock_requests_total", Help: "x"}))
		NewHandler(&stubLocker{}, Options{Registerer: bad})
	})
}

// TestHandlerPeer: the Locker finds the requester's address, forwarded-for
// header, Basic credentials and TLS state in its context, on both endpoints.
func TestHandlerPeer(t *testing.T) {
	var peer Peer
	h := NewHandler(peerLocker{&peer}, Options{})
	for _, path := range []string{"/v1/pre-reboot", "/v1/steady-state"} {
		peer = Peer{}
		r := httptest.NewRequest("POST", path, strings.NewReader(validBody))
		r.RemoteAddr = "192.0.2.7:4242"
		r.Header = validHeader.Clone()
		r.Header.Add("X-Forwarded-For", "198.51.100.1, 10.0.0.2")
		r.Header.Add("X-Forwarded-For", "10.0.0.3")
		r.SetBasicAuth("zincati", "s3cret")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		require.Equal(t, 200, rec.Code, rec.Body.String())
		assert.Equal(t, Peer{
			RemoteAddr: "192.0.2.7:4242", ForwardedFor: "198.51.100.1, 10.0.0.2, 10.0.0.3",
			Username: "zincati", Password: "s3cret", HasBasicAuth: true,
		}, peer, path)
	}

	// No credentials, a malformed Authorization header, and TLS.
	for _, auth := range []string{"", "Bearer abc", "Basic !!!"} {
		peer = Peer{}
		hdr := validHeader.Clone()
		if auth != "" {
			hdr.Set("Authorization", auth)
		}
		serve(h, "POST", "/v1/pre-reboot", hdr, validBody)
		assert.False(t, peer.HasBasicAuth, auth)
		assert.Empty(t, peer.ForwardedFor)
		assert.NotEmpty(t, peer.RemoteAddr)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	resp, err := (&Client{BaseURL: srv.URL, HTTPClient: srv.Client()}).PreReboot(t.Context(), ClientParams{"a", "g"})
	require.NoError(t, err)
	assert.True(t, resp.OK())
	assert.True(t, peer.TLS)

	_, ok := PeerFrom(t.Context())
	assert.False(t, ok, "no Peer outside the handler")
	got, ok := PeerFrom(ContextWithPeer(t.Context(), Peer{Username: "u"}))
	assert.True(t, ok)
	assert.Equal(t, "u", got.Username)
}

// TestPeerHidesPassword: printing or logging a Peer leaves the password out.
func TestPeerHidesPassword(t *testing.T) {
	p := Peer{RemoteAddr: "192.0.2.7:1", Username: "zincati", Password: "s3cret", HasBasicAuth: true}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "peer", p)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "peer", p)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s", p, p, p, p), buf.String()} {
		assert.NotContains(t, s, "s3cret")
		assert.Contains(t, s, "zincati")
	}
}

// TestDurationBucketsCoverHeldRequests checks that a request held up to Zincati's
// 30-minute timeout lands in a bucket of its own, not in +Inf.
func TestDurationBucketsCoverHeldRequests(t *testing.T) {
	require.True(t, slices.IsSorted(DurationBuckets))
	assert.GreaterOrEqual(t, DurationBuckets[len(DurationBuckets)-1], (30 * time.Minute).Seconds())
	assert.LessOrEqual(t, DurationBuckets[0], 0.001)
	above10s := 0
	for _, b := range DurationBuckets {
		if b > 10 {
			above10s++
		}
	}
	assert.GreaterOrEqual(t, above10s, 8, "held requests (up to --wait, 25 minutes) need buckets above 10 s")
}

package fleetlock

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gateLocker holds every call until release is closed (or its context ends), counts
// calls, and reports the context's end of each call on ended.
type gateLocker struct {
	release chan struct{}
	err     error
	calls   atomic.Int32
	running atomic.Int32
	ended   chan error
}

func newGateLocker() *gateLocker {
	return &gateLocker{release: make(chan struct{}), ended: make(chan error, 100)}
}

func (g *gateLocker) PreReboot(ctx context.Context, _ ClientParams) error {
	g.calls.Add(1)
	g.running.Add(1)
	defer g.running.Add(-1)
	select {
	case <-g.release:
		return g.err
	case <-ctx.Done():
		g.ended <- ctx.Err()
		return ctx.Err()
	}
}

func (g *gateLocker) SteadyState(ctx context.Context, p ClientParams) (bool, error) {
	err := g.PreReboot(ctx, p)
	return err == nil, err
}

// send serves one request in the background; its recorder is on the returned channel.
func send(h http.Handler, ctx context.Context, path, body string, mod func(*http.Request)) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, path, strings.NewReader(body))
	r.Header = validHeader.Clone()
	if mod != nil {
		mod(r)
	}
	go func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		out <- rec
	}()
	return out
}

func bodyFor(id, group string) string {
	return `{"client_params":{"id":"` + id + `","group":"` + group + `"}}`
}

// TestShareOneCallPerRequest: identical concurrent requests make one Locker call and
// all get its answer; another group, another endpoint or other credentials make
// their own call; a request after the answer makes a new one.
func TestShareOneCallPerRequest(t *testing.T) {
	lk := newGateLocker()
	lk.err = ErrDrainInProgress
	h := NewHandler(lk, Options{})
	ctx := t.Context()
	var recs []<-chan *httptest.ResponseRecorder
	for i := range 10 {
		recs = append(recs, send(h, ctx, "/v1/pre-reboot", validBody, func(r *http.Request) {
			r.RemoteAddr = "10.0.0.5:" + string(rune('0'+i)) // another TCP port: the same peer
			r.SetBasicAuth("zincati", "pw")
		}))
	}
	require.Eventually(t, func() bool { return lk.running.Load() == 1 }, 5*time.Second, time.Millisecond)
	others := []<-chan *httptest.ResponseRecorder{
		send(h, ctx, "/v1/pre-reboot", bodyFor(testID, "other"), func(r *http.Request) { r.RemoteAddr = "10.0.0.5:1"; r.SetBasicAuth("zincati", "pw") }),
		send(h, ctx, "/v1/steady-state", validBody, func(r *http.Request) { r.RemoteAddr = "10.0.0.5:1"; r.SetBasicAuth("zincati", "pw") }),
		send(h, ctx, "/v1/pre-reboot", validBody, func(r *http.Request) { r.RemoteAddr = "10.0.0.5:1"; r.SetBasicAuth("zincati", "other") }),
		send(h, ctx, "/v1/pre-reboot", validBody, func(r *http.Request) { r.RemoteAddr = "10.0.0.6:1"; r.SetBasicAuth("zincati", "pw") }),
	}
	require.Eventually(t, func() bool { return lk.running.Load() == 5 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, int32(5), lk.calls.Load(), "one call for the 10 identical requests, one for each other")
	close(lk.release)
	for _, c := range append(recs, others...) {
		assertReply(t, <-c, 409, KindDrainInProgress)
	}
	assertReply(t, serve(h, "POST", "/v1/pre-reboot", validHeader, validBody), 409, KindDrainInProgress)
	assert.Equal(t, int32(6), lk.calls.Load(), "a request after the answer makes its own call")
}

// TestShareOutlivesOneRequest: a request that ends does not end the shared call for
// the others; when every request has ended, the call's context ends.
func TestShareOutlivesOneRequest(t *testing.T) {
	lk := newGateLocker()
	h := NewHandler(lk, Options{})
	ctx1, cancel1 := context.WithCancel(t.Context())
	first := send(h, ctx1, "/v1/pre-reboot", validBody, nil)
	require.Eventually(t, func() bool { return lk.running.Load() == 1 }, 5*time.Second, time.Millisecond)
	second := send(h, t.Context(), "/v1/pre-reboot", validBody, nil)
	time.Sleep(20 * time.Millisecond)
	cancel1()
	assertReply(t, <-first, 503, KindAPIUnavailable)
	select {
	case err := <-lk.ended:
		t.Fatalf("the shared call ended with its first request: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(lk.release)
	assertReply(t, <-second, 200, KindLockGranted)
	assert.Equal(t, int32(1), lk.calls.Load())

	lk = newGateLocker()
	h = NewHandler(lk, Options{})
	var cancels []context.CancelFunc
	var recs []<-chan *httptest.ResponseRecorder
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		cancels = append(cancels, cancel)
		recs = append(recs, send(h, ctx, "/v1/steady-state", validBody, nil))
	}
	require.Eventually(t, func() bool { return lk.running.Load() == 1 }, 5*time.Second, time.Millisecond)
	for i, cancel := range cancels {
		cancel()
		assertReply(t, <-recs[i], 503, KindAPIUnavailable)
	}
	select {
	case err := <-lk.ended:
		assert.ErrorIs(t, err, context.Canceled, "every request left: the call ends")
	case <-time.After(5 * time.Second):
		t.Fatal("the shared call outlived every request")
	}
}

// TestShareBounds: past MaxRequestsPerNode requests held for one ID, or
// MaxRequestsPerConnection on one HTTP/2 connection, a request is answered
// too_many_requests at once; other IDs and connections are not affected.
func TestShareBounds(t *testing.T) {
	lk := newGateLocker()
	h := NewHandler(lk, Options{MaxRequestsPerNode: 3, MaxRequestsPerConnection: 2})
	ctx := t.Context()
	var held []<-chan *httptest.ResponseRecorder
	for i := range 3 {
		held = append(held, send(h, ctx, "/v1/pre-reboot", validBody, func(r *http.Request) {
			r.RemoteAddr = "10.0.0.5:" + string(rune('1'+i))
		}))
	}
	otherID := strings.Repeat("b", 32)
	h2 := func(r *http.Request) { r.ProtoMajor, r.RemoteAddr = 2, "10.0.0.9:443" }
	for range 2 {
		held = append(held, send(h, ctx, "/v1/pre-reboot", bodyFor(otherID, "default"), h2))
	}
	require.Eventually(t, func() bool { return lk.running.Load() == 2 }, 5*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond)

	rec := <-send(h, ctx, "/v1/steady-state", validBody, nil)
	rep := assertReply(t, rec, 429, KindTooManyRequests)
	assert.Contains(t, rep.Value, "3 requests for this ID are already waiting")
	assert.Equal(t, "10", rec.Header().Get("Retry-After"))
	rep = assertReply(t, <-send(h, ctx, "/v1/pre-reboot", bodyFor(strings.Repeat("c", 32), "default"), h2), 429, KindTooManyRequests)
	assert.Contains(t, rep.Value, "2 requests of this HTTP/2 connection")
	third := send(h, ctx, "/v1/pre-reboot", bodyFor(strings.Repeat("c", 32), "default"), nil)

	close(lk.release)
	for _, c := range append(held, third) {
		assertReply(t, <-c, 200, KindLockGranted)
	}
	assertReply(t, serve(h, "POST", "/v1/steady-state", validHeader, validBody), 200, KindLockReleased)
}

// TestSharePanic: a Locker panic in a shared call is internal_error for every
// request that waited for it, and the server goes on.
func TestSharePanic(t *testing.T) {
	var once sync.Once
	release := make(chan struct{})
	lk := &funcLocker{pre: func(context.Context) error {
		<-release
		once.Do(func() { panic("kaboom") })
		return nil
	}}
	h := NewHandler(lk, Options{})
	a := send(h, t.Context(), "/v1/pre-reboot", validBody, nil)
	b := send(h, t.Context(), "/v1/pre-reboot", validBody, nil)
	time.Sleep(20 * time.Millisecond)
	close(release)
	assertReply(t, <-a, 500, KindInternalError)
	assertReply(t, <-b, 500, KindInternalError)
	assertReply(t, serve(h, "POST", "/v1/pre-reboot", validHeader, validBody), 200, KindLockGranted)
}

type funcLocker struct{ pre func(context.Context) error }

func (f *funcLocker) PreReboot(ctx context.Context, _ ClientParams) error { return f.pre(ctx) }
func (f *funcLocker) SteadyState(context.Context, ClientParams) (bool, error) {
	return false, errors.New("unused")
}

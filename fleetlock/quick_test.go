package fleetlock

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
)

// quickLocker answers steady-state at once when ok, and records which path was taken.
type quickLocker struct {
	stubLocker
	ok        bool
	quickErr  error
	quickHits int
	panics    bool
}

func (q *quickLocker) SteadyStateQuick(_ context.Context, p ClientParams) (bool, bool, error) {
	q.quickHits++
	q.got = p
	if q.panics {
		panic("boom")
	}
	return false, q.ok, q.quickErr
}

// TestHandlerQuickSteadyState: a QuickSteadyStater's at-once answer is the reply,
// without SteadyState; when it cannot answer, SteadyState is called; its error and
// its panic are replies like SteadyState's.
func TestHandlerQuickSteadyState(t *testing.T) {
	q := &quickLocker{ok: true}
	h := NewHandler(q, Options{})
	assertReply(t, serve(h, http.MethodPost, "/v1/steady-state", validHeader, validBody), http.StatusOK, KindLockNotHeld)
	assert.Equal(t, 1, q.quickHits)
	assert.Equal(t, 0, q.calls, "answered at once: SteadyState not called")
	assert.Equal(t, testID, q.got.ID)

	q.ok = false
	q.released = true
	assertReply(t, serve(h, http.MethodPost, "/v1/steady-state", validHeader, validBody), http.StatusOK, KindLockReleased)
	assert.Equal(t, 2, q.quickHits)
	assert.Equal(t, 1, q.calls, "not answerable at once: SteadyState called")

	q.ok, q.quickErr = true, errors.New("cache not synced")
	assertReply(t, serve(h, http.MethodPost, "/v1/steady-state", validHeader, validBody), http.StatusInternalServerError, KindInternalError)
	assert.Equal(t, 1, q.calls)

	q.quickErr, q.panics = nil, true
	assertReply(t, serve(h, http.MethodPost, "/v1/steady-state", validHeader, validBody), http.StatusInternalServerError, KindInternalError)
	assert.Equal(t, 1, q.calls)
}

package fleetlock

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
)

// isErr is a typed error that matches a sentinel through an Is method.
type isErr struct{ target error }

func (e isErr) Error() string        { return "typed: " + e.target.Error() }
func (e isErr) Is(target error) bool { return target == e.target }

func TestOutcome(t *testing.T) {
	opaque := errors.New("etcd on fire")
	tests := []struct {
		name    string
		success Kind
		err     error
		status  int
		kind    Kind
		value   string // "" means: any non-empty value
	}{
		{"granted", KindLockGranted, nil, 200, KindLockGranted, ""},
		{"released", KindLockReleased, nil, 200, KindLockReleased, ""},
		{"not held", KindLockNotHeld, nil, 200, KindLockNotHeld, ""},
		{"sentinel", KindLockGranted, ErrLockHeld, 409, KindLockHeld, ErrLockHeld.Error()},
		{"unauthorized", KindLockGranted, fmt.Errorf("credentials required: %w", ErrUnauthorized), 401, KindUnauthorized, "credentials required: unauthorized"},
		{"forbidden typed", KindLockReleased, isErr{ErrForbidden}, 403, KindForbidden, "typed: forbidden"},
		{"wrapped", KindLockGranted, fmt.Errorf("node b holds it: %w", ErrLockHeld), 409, KindLockHeld, "node b holds it: " + ErrLockHeld.Error()},
		{"typed Is", KindLockGranted, isErr{ErrDrainBlocked}, 409, KindDrainBlocked, "typed: " + ErrDrainBlocked.Error()},
		{"joined", KindLockGranted, errors.Join(opaque, ErrAmbiguousNode), 422, KindAmbiguousNode, ""},
		{"first row wins", KindLockGranted, errors.Join(ErrUnavailable, ErrLockHeld), 409, KindLockHeld, ""},
		{"empty message", KindLockGranted, &detail{ErrUnknownNode, ""}, 422, KindUnknownNode, ErrUnknownNode.Error()},
		{"canceled", KindLockGranted, context.Canceled, 503, KindAPIUnavailable, context.Canceled.Error()},
		{"deadline wrapped", KindLockNotHeld, fmt.Errorf("get node: %w", context.DeadlineExceeded), 503, KindAPIUnavailable, "get node: context deadline exceeded"},
		{"opaque hides details", KindLockGranted, opaque, 500, KindInternalError, "internal server error"},
		{"unknown success kind", "", nil, 500, KindInternalError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, rep := outcome(tt.success, tt.err)
			assert.Equal(t, tt.status, status)
			assert.Equal(t, tt.kind, rep.Kind)
			assert.NotEmpty(t, rep.Value)
			if tt.value != "" {
				assert.Equal(t, tt.value, rep.Value)
			}
		})
	}
}

// TestKindsTable checks every row maps to itself and only success rows are 2xx.
func TestKindsTable(t *testing.T) {
	seen := map[Kind]bool{}
	for _, s := range kinds {
		assert.False(t, seen[s.kind], "duplicate kind %s", s.kind)
		seen[s.kind] = true
		status, rep := outcome(s.kind, s.err)
		assert.Equal(t, s.status, status, s.kind)
		assert.Equal(t, s.kind, rep.Kind)
		assert.NotEmpty(t, rep.Value, s.kind)
		assert.Equal(t, s.err == nil, status >= 200 && status < 300, "only success kinds may be 2xx: %s", s.kind)
		assert.NotEqual(t, 3, status/100, s.kind)
	}
	assert.Len(t, seen, 29)
}

// TestEveryKindOverHTTP produces every kind through the handler and checks the
// status, headers and body of each.
func TestEveryKindOverHTTP(t *testing.T) {
	locker := func(err error, released bool) Locker { return &stubLocker{err: err, released: released} }
	tests := []struct {
		kind   Kind
		status int
		locker Locker
		method string
		path   string
		body   string
	}{
		{KindLockGranted, 200, locker(nil, false), "POST", "/v1/pre-reboot", validBody},
		{KindLockReleased, 200, locker(nil, true), "POST", "/v1/steady-state", validBody},
		{KindLockNotHeld, 200, locker(nil, false), "POST", "/v1/steady-state", validBody},
		{KindUnauthorized, 401, locker(ErrUnauthorized, false), "POST", "/v1/pre-reboot", validBody},
		{KindForbidden, 403, locker(ErrForbidden, true), "POST", "/v1/steady-state", validBody},
		{KindLockHeld, 409, locker(ErrLockHeld, false), "POST", "/v1/pre-reboot", validBody},
		{KindDrainInProgress, 409, locker(ErrDrainInProgress, false), "POST", "/v1/pre-reboot", validBody},
		{KindDrainBlocked, 409, locker(ErrDrainBlocked, false), "POST", "/v1/pre-reboot", validBody},
		{KindPaused, 409, locker(ErrPaused, false), "POST", "/v1/pre-reboot", validBody},
		{KindNodeHeld, 409, locker(ErrNodeHeld, false), "POST", "/v1/pre-reboot", validBody},
		{KindWindowClosed, 409, locker(ErrWindowClosed, false), "POST", "/v1/pre-reboot", validBody},
		{KindRebootGap, 409, locker(ErrRebootGap, false), "POST", "/v1/pre-reboot", validBody},
		{KindAlertFiring, 409, locker(ErrAlertFiring, false), "POST", "/v1/pre-reboot", validBody},
		{KindBlockerCheckFailing, 409, locker(ErrBlockerCheckFailing, false), "POST", "/v1/pre-reboot", validBody},
		{KindPodsBlocking, 409, locker(ErrPodsBlocking, false), "POST", "/v1/pre-reboot", validBody},
		{KindGroupNotReady, 409, locker(ErrGroupNotReady, false), "POST", "/v1/pre-reboot", validBody},
		{KindGroupOrder, 409, locker(ErrGroupOrder, false), "POST", "/v1/pre-reboot", validBody},
		{KindNodeNotReady, 409, locker(ErrNodeNotReady, false), "POST", "/v1/steady-state", validBody},
		{KindNodeUncordoned, 409, locker(ErrNodeUncordoned, false), "POST", "/v1/pre-reboot", validBody},
		{KindNodeGone, 422, locker(ErrNodeGone, false), "POST", "/v1/pre-reboot", validBody},
		{KindUnknownNode, 422, locker(ErrUnknownNode, false), "POST", "/v1/steady-state", validBody},
		{KindAmbiguousNode, 422, locker(ErrAmbiguousNode, false), "POST", "/v1/pre-reboot", validBody},
		{KindInvalidRequest, 400, locker(nil, false), "POST", "/v1/pre-reboot", "{}"},
		{KindMethodNotAllowed, 405, locker(nil, false), "GET", "/v1/pre-reboot", ""},
		{KindNotFound, 404, locker(nil, false), "POST", "/v1/nope", validBody},
		{KindBodyTooLarge, 413, locker(nil, false), "POST", "/v1/pre-reboot", validBody + string(make([]byte, 5000))},
		{KindTooManyRequests, 429, locker(ErrTooManyRequests, false), "POST", "/v1/steady-state", validBody},
		{KindAPIUnavailable, 503, locker(ErrUnavailable, false), "POST", "/v1/pre-reboot", validBody},
		{KindInternalError, 500, locker(errors.New("boom"), false), "POST", "/v1/steady-state", validBody},
	}
	covered := map[Kind]bool{}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			rec := serve(NewHandler(tt.locker, Options{}), tt.method, tt.path, validHeader, tt.body)
			rep := assertReply(t, rec, tt.status, tt.kind)
			assert.Equal(t, tt.kind == KindMethodNotAllowed, rec.Header().Get("Allow") == "POST")
			assert.Equal(t, tt.kind == KindAPIUnavailable || tt.kind == KindTooManyRequests, rec.Header().Get("Retry-After") == "10")
			assert.Equal(t, tt.kind == KindUnauthorized, rec.Header().Get("WWW-Authenticate") == `Basic realm="reboot-manager"`)
			if tt.kind == KindInternalError {
				assert.NotContains(t, rep.Value, "boom")
			}
			covered[tt.kind] = true
		})
	}
	for _, s := range kinds {
		assert.True(t, covered[s.kind], "kind %s has no HTTP case", s.kind)
	}
}

// TestNothingGrantsReboot: pre-reboot is 2xx only when the Locker returns nil.
func TestNothingGrantsReboot(t *testing.T) {
	errs := []error{
		ErrUnauthorized, ErrForbidden, isErr{ErrForbidden},
		ErrLockHeld, ErrDrainInProgress, ErrDrainBlocked, ErrUnknownNode, ErrAmbiguousNode, ErrUnavailable,
		fmt.Errorf("x: %w", ErrLockHeld), isErr{ErrDrainInProgress}, errors.New(""), errors.New("other"),
		context.Canceled, context.DeadlineExceeded, &detail{nil, ""}, errors.Join(nil, errors.New("j")),
	}
	for _, err := range append(errs, nil) {
		for _, released := range []bool{false, true} {
			h := NewHandler(&stubLocker{err: err, released: released}, Options{})
			for _, path := range []string{"/v1/pre-reboot", "/v1/steady-state"} {
				rec := serve(h, http.MethodPost, path, validHeader, validBody)
				ok := rec.Code >= 200 && rec.Code < 300
				assert.Equal(t, err == nil, ok, "%s err=%v: status %d", path, err, rec.Code)
			}
		}
	}
	rec := serve(NewHandler(&stubLocker{panicWith: "kaboom"}, Options{}), http.MethodPost, "/v1/pre-reboot", validHeader, validBody)
	assertReply(t, rec, 500, KindInternalError)
}

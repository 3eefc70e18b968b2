package access

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock"
)

// quickLock is a stubLock that answers steady-state at once, as *lock.Lock does for
// a node that holds nothing.
type quickLock struct {
	stubLock
	quick int
}

func (q *quickLock) SteadyStateQuick(context.Context, fleetlock.ClientParams) (bool, bool, error) {
	q.quick++
	return false, true, nil
}

// TestGuardQuickSteadyState: the guard's at-once answer runs every check first (a
// node in another group's hold is refused, from another address too) and is declined
// with credentials, whose password checks may wait.
func TestGuardQuickSteadyState(t *testing.T) {
	nodes := stubNodes{idA: node("node-a", "10.0.0.5")}
	q := &quickLock{stubLock: stubLock{nodes: nodes}}
	g := NewGuard(q, Options{Nodes: nodes})
	p := fleetlock.ClientParams{ID: idA, Group: "workers"}
	ctx := fleetlock.ContextWithPeer(t.Context(), fleetlock.Peer{RemoteAddr: "10.0.0.5:1000"})

	released, ok, err := g.SteadyStateQuick(ctx, p)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.False(t, released)
	assert.Equal(t, 1, q.quick)

	_, ok, err = g.SteadyStateQuick(fleetlock.ContextWithPeer(t.Context(), fleetlock.Peer{RemoteAddr: "10.0.0.9:1000"}), p)
	assert.True(t, ok)
	assert.ErrorIs(t, err, fleetlock.ErrForbidden, "another address: refused at once")
	assert.Equal(t, 1, q.quick)

	nodes[idA].Annotations = map[string]string{lock.AnnotationStatus: string(lock.StateRebooting), lock.AnnotationGroup: "infra"}
	_, ok, err = g.SteadyStateQuick(ctx, p)
	assert.True(t, ok)
	assert.ErrorIs(t, err, fleetlock.ErrForbidden, "another group's hold: refused at once")
	assert.Equal(t, 1, q.quick)

	creds := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, creds, "*:a:"+hash(t, "a")+":*")
	cf, err := LoadCredentialsFile(creds, ReloadOptions{})
	require.NoError(t, err)
	g = NewGuard(q, Options{Credentials: cf})
	_, ok, err = g.SteadyStateQuick(ctx, p)
	assert.NoError(t, err)
	assert.False(t, ok, "with credentials: through SteadyState")
	assert.Equal(t, 1, q.quick)
	assert.Zero(t, q.calls())
}

package access

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock"
)

const (
	idA = "978a225b3d7b40e9acd7ce9b62f68444"
	idB = "0123456789abcdef0123456789abcdef"
)

// stubNodes resolves IDs as the lock does, from a map.
type stubNodes map[string]*corev1.Node

func (s stubNodes) Resolve(id string) (*corev1.Node, error) {
	if n, ok := s[id]; ok {
		return n, nil
	}
	return nil, fmt.Errorf("no node has Zincati ID %s: %w", id, fleetlock.ErrUnknownNode)
}

func node(name string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	return n
}

// stubLock grants every pre-reboot of a known node and counts the calls that reach
// it; like the lock, it answers unknown_node on pre-reboot and lock_not_held on
// steady-state for an unknown ID.
type stubLock struct {
	nodes stubNodes

	mu                  sync.Mutex
	preCalls, ssCalls   int
	grantUnknown        bool
	preErr              error
	releasedOnSteady    bool
	lastPre, lastSteady fleetlock.ClientParams
}

func (s *stubLock) PreReboot(_ context.Context, p fleetlock.ClientParams) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.preCalls++
	s.lastPre = p
	if _, err := s.nodes.Resolve(p.ID); err != nil && !s.grantUnknown {
		return err
	}
	return s.preErr
}

func (s *stubLock) SteadyState(_ context.Context, p fleetlock.ClientParams) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ssCalls++
	s.lastSteady = p
	if _, err := s.nodes.Resolve(p.ID); err != nil {
		return false, nil
	}
	return s.releasedOnSteady, nil
}

func (s *stubLock) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.preCalls + s.ssCalls
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// req is one FleetLock request as the handler receives it.
type req struct {
	steady     bool
	id, group  string
	remote     string
	user, pass string
	auth       bool
	xff        []string
}

// do sends r through the FleetLock handler h and returns the response.
func do(t *testing.T, h http.Handler, r req) (*httptest.ResponseRecorder, fleetlock.Reply) {
	t.Helper()
	path := "/v1/pre-reboot"
	if r.steady {
		path = "/v1/steady-state"
	}
	if r.id == "" {
		r.id = idA
	}
	if r.group == "" {
		r.group = "workers"
	}
	if r.remote == "" {
		r.remote = "10.0.0.5:40000"
	}
	body := fmt.Sprintf("{\n  \"client_params\": {\n    \"id\": %q,\n    \"group\": %q\n  }\n}", r.id, r.group)
	hr := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	hr.RemoteAddr = r.remote
	hr.Header.Set(fleetlock.ProtocolHeader, "true")
	if r.auth {
		hr.SetBasicAuth(r.user, r.pass)
	}
	for _, x := range r.xff {
		hr.Header.Add("X-Forwarded-For", x)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, hr)
	var rep fleetlock.Reply
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &rep), rec.Body.String())
	return rec, rep
}

// writeFile writes lines to path, replacing it.
func writeFile(t *testing.T, path string, lines ...string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
}

// setup returns a FleetLock handler over a Guard over a stubLock, with the
// credentials file at path (written by the caller) and the given options.
func setup(t *testing.T, lines []string, opts Options) (http.Handler, *stubLock, *Guard, string) {
	t.Helper()
	nodes := stubNodes{idA: node("node-a", "10.0.0.5", "2001:db8::5"), idB: node("node-b", "10.0.0.6")}
	nodes[idA].Labels = map[string]string{"role": "workers"}
	nodes[idB].Labels = map[string]string{"role": "infra"}
	lk := &stubLock{nodes: nodes}
	path := filepath.Join(t.TempDir(), "credentials")
	if lines != nil {
		writeFile(t, path, lines...)
		creds, err := LoadCredentialsFile(path, ReloadOptions{Now: opts.Now})
		require.NoError(t, err)
		opts.Credentials = creds
	}
	if opts.Nodes != nil {
		opts.Nodes = nodes
	}
	if opts.Resolver != nil {
		opts.Resolver = nodes
	}
	g := NewGuard(lk, opts)
	return fleetlock.NewHandler(g, fleetlock.Options{}), lk, g, path
}

func TestGuardBasicAuth(t *testing.T) {
	h, lk, g, _ := setup(t, []string{
		"workers:alice:" + hash(t, "alice-pw") + ":role=workers",
		"infra:bob:" + hash(t, "bob-pw") + ":role=infra",
		"workers:bob:" + hash(t, "bob-pw") + ":role in (workers)",
		"*:admin:" + hash(t, "admin-pw") + ":*",
		"*:carol:" + hash(t, "carol-pw") + ":role=infra",
	}, Options{Resolver: stubNodes{}})
	infraNode := idB
	for _, tt := range []struct {
		name   string
		r      req
		status int
		kind   fleetlock.Kind
		value  string
	}{
		{"no credentials", req{}, 401, fleetlock.KindUnauthorized, "credentials required"},
		{"no credentials steady-state", req{steady: true}, 401, fleetlock.KindUnauthorized, "credentials required"},
		{"wrong password", req{auth: true, user: "alice", pass: "nope"}, 401, fleetlock.KindUnauthorized, "wrong user name or password"},
		{"empty password", req{auth: true, user: "alice"}, 401, fleetlock.KindUnauthorized, "wrong user name or password"},
		{"unknown user", req{auth: true, user: "mallory", pass: "alice-pw"}, 401, fleetlock.KindUnauthorized, "wrong user name or password"},
		{"user name is case-sensitive", req{auth: true, user: "Alice", pass: "alice-pw"}, 401, fleetlock.KindUnauthorized, ""},
		{"password over 72 bytes", req{auth: true, user: "alice", pass: "alice-pw" + strings.Repeat("x", 65)}, 401, fleetlock.KindUnauthorized, ""},
		{"right user, wrong group", req{auth: true, user: "alice", pass: "alice-pw", group: "infra"}, 403, fleetlock.KindForbidden, `user "alice" may not act for group "infra"`},
		{"wrong group on steady-state", req{steady: true, auth: true, user: "alice", pass: "alice-pw", group: "infra"}, 403, fleetlock.KindForbidden, ""},
		{"right group, another node", req{id: infraNode, auth: true, user: "alice", pass: "alice-pw"}, 403, fleetlock.KindForbidden, `user "alice" may not act for the node with this ID`},
		{"another node on steady-state", req{steady: true, id: infraNode, auth: true, user: "alice", pass: "alice-pw"}, 403, fleetlock.KindForbidden, ""},
		{"line for the group, not the node", req{id: infraNode, auth: true, user: "bob", pass: "bob-pw", group: "workers"}, 403, fleetlock.KindForbidden, "node"},
		{"line for the node, not the group", req{auth: true, user: "bob", pass: "bob-pw", group: "infra"}, 403, fleetlock.KindForbidden, "node"},
		{"any group, selected node only", req{auth: true, user: "carol", pass: "carol-pw", group: "x"}, 403, fleetlock.KindForbidden, "node"},
		{"right group and node", req{auth: true, user: "alice", pass: "alice-pw"}, 200, fleetlock.KindLockGranted, ""},
		{"one of the user's lines", req{auth: true, user: "bob", pass: "bob-pw", group: "workers"}, 200, fleetlock.KindLockGranted, ""},
		{"another of the user's lines", req{id: infraNode, auth: true, user: "bob", pass: "bob-pw", group: "infra"}, 200, fleetlock.KindLockGranted, ""},
		{"any group, selected node", req{id: infraNode, auth: true, user: "carol", pass: "carol-pw", group: "x"}, 200, fleetlock.KindLockGranted, ""},
		{"any group, any node", req{auth: true, user: "admin", pass: "admin-pw", group: "some.other-group"}, 200, fleetlock.KindLockGranted, ""},
		{"any group, steady-state", req{steady: true, auth: true, user: "admin", pass: "admin-pw", group: "default"}, 200, fleetlock.KindLockNotHeld, ""},
		{"unknown ID: the lock answers", req{id: "ffffffffffffffffffffffffffffffff", auth: true, user: "alice", pass: "alice-pw"}, 422, fleetlock.KindUnknownNode, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := lk.calls()
			rec, rep := do(t, h, tt.r)
			assert.Equal(t, tt.status, rec.Code, rep.Value)
			assert.Equal(t, tt.kind, rep.Kind)
			assert.Contains(t, rep.Value, tt.value)
			assert.NotContains(t, rep.Value, "node-", "the reply does not name the node")
			assert.Equal(t, tt.status == 401, rec.Header().Get("WWW-Authenticate") == `Basic realm="reboot-manager"`)
			if tt.status == 401 || tt.status == 403 {
				assert.Equal(t, before, lk.calls(), "a refused request never reaches the lock")
			} else {
				assert.Equal(t, before+1, lk.calls())
			}
		})
	}
	assert.NoError(t, testutil.CollectAndCompare(g, strings.NewReader(`
# HELP rebootmanager_access_refused_total FleetLock requests refused by access control, by reason: no_credentials, bad_credentials, wrong_group, wrong_node, other_group, source_address, busy.
# TYPE rebootmanager_access_refused_total counter
rebootmanager_access_refused_total{reason="bad_credentials"} 5
rebootmanager_access_refused_total{reason="busy"} 0
rebootmanager_access_refused_total{reason="no_credentials"} 2
rebootmanager_access_refused_total{reason="other_group"} 0
rebootmanager_access_refused_total{reason="wrong_group"} 2
rebootmanager_access_refused_total{reason="wrong_node"} 5
`)))
}

// TestGuardCacheRejectsWrongPassword: once a password was right, a wrong one for
// the same user is still refused, and so is the right one for another group; the
// cache outlives neither its TTL nor a change of the hash.
func TestGuardCacheRejectsWrongPassword(t *testing.T) {
	clock := newClock()
	h, lk, g, _ := setup(t, []string{"workers:alice:" + hash(t, "right") + ":*"}, Options{Now: clock.Now, CacheTTL: time.Minute})
	right := req{auth: true, user: "alice", pass: "right"}
	for i := range 3 {
		rec, _ := do(t, h, right)
		require.Equal(t, 200, rec.Code, "attempt %d", i)
		for _, wrong := range []req{
			{auth: true, user: "alice", pass: "wrong"},
			{auth: true, user: "alice", pass: "righ"},
			{auth: true, user: "alice", pass: "right "},
			{auth: true, user: "alice", pass: ""},
			{auth: true, user: "alicE", pass: "right"},
		} {
			rec, rep := do(t, h, wrong)
			assert.Equal(t, 401, rec.Code, "%+v after a success: %s", wrong, rep.Value)
		}
		rec, _ = do(t, h, req{auth: true, user: "alice", pass: "right", group: "infra"})
		assert.Equal(t, 403, rec.Code, "the cache is not a pass for every group")
	}
	assert.Equal(t, 3, lk.calls())
	g.verify.mu.Lock()
	assert.Len(t, g.verify.ok, 1, "one success cached")
	g.verify.mu.Unlock()

	// After the TTL the entry is stale: the password is checked again, still right.
	clock.Advance(2 * time.Minute)
	rec, _ := do(t, h, right)
	assert.Equal(t, 200, rec.Code)
	rec, _ = do(t, h, req{auth: true, user: "alice", pass: "wrong"})
	assert.Equal(t, 401, rec.Code)
}

// TestGuardReloadsCredentials: a changed credentials file takes effect at the next
// check, even for passwords whose success was cached; an invalid file leaves the one
// in force.
func TestGuardReloadsCredentials(t *testing.T) {
	clock := newClock()
	var logs bytes.Buffer
	nodes := stubNodes{idA: node("node-a", "10.0.0.5")}
	lk := &stubLock{nodes: nodes}
	path := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, path, "workers:alice:"+hash(t, "old")+":*", "workers:carol:"+hash(t, "carol-pw")+":*")
	creds, err := LoadCredentialsFile(path, ReloadOptions{Now: clock.Now, Interval: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	h := fleetlock.NewHandler(NewGuard(lk, Options{Credentials: creds, Now: clock.Now}), fleetlock.Options{})
	status := func(user, pass string) int {
		rec, _ := do(t, h, req{auth: true, user: user, pass: pass})
		return rec.Code
	}
	require.Equal(t, 200, status("alice", "old"))
	require.Equal(t, 200, status("carol", "carol-pw"))

	// alice's password changes, carol is removed, dave is added.
	writeFile(t, path, "# rotated", "workers:alice:"+hash(t, "new")+":*", "*:dave:"+hash(t, "dave-pw")+":*")
	assert.Equal(t, 200, status("alice", "old"), "not checked again before the interval")
	clock.Advance(5 * time.Second)
	assert.Equal(t, 401, status("alice", "old"), "the old password, although cached, no longer works")
	assert.Equal(t, 200, status("alice", "new"))
	assert.Equal(t, 401, status("carol", "carol-pw"), "a removed user, although cached, is refused")
	assert.Equal(t, 200, status("dave", "dave-pw"))
	assert.Contains(t, logs.String(), "credentials file reloaded")

	// An invalid file is logged once and ignored; fixing it takes effect.
	writeFile(t, path, "workers:alice:"+hash(t, "newer")+":*", "workers:erin:plaintext:*")
	for range 3 {
		clock.Advance(5 * time.Second)
		assert.Equal(t, 200, status("alice", "new"), "the last valid file stays in force")
		assert.Equal(t, 401, status("alice", "newer"))
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "invalid credentials file"), logs.String())
	assert.Contains(t, logs.String(), "line 2: user \\\"erin\\\"")
	require.NoError(t, os.Remove(path))
	clock.Advance(5 * time.Second)
	assert.Equal(t, 200, status("alice", "new"), "a missing file leaves the one in force")
	writeFile(t, path, "workers:alice:"+hash(t, "newer")+":*")
	clock.Advance(5 * time.Second)
	assert.Equal(t, 200, status("alice", "newer"))
	assert.Equal(t, 401, status("alice", "new"))
}

func TestLoadCredentialsFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadCredentialsFile(filepath.Join(dir, "missing"), ReloadOptions{})
	assert.ErrorIs(t, err, os.ErrNotExist)
	path := filepath.Join(dir, "credentials")
	writeFile(t, path, "# ok", "*:alice:"+hash(t, "x")+":*", "workers:bob")
	_, err = LoadCredentialsFile(path, ReloadOptions{})
	require.Error(t, err)
	assert.Equal(t, path+": line 3: want GROUP:USER:BCRYPT_HASH:NODE_SELECTOR, got 2 field(s) separated by ':'", err.Error())
}

func TestGuardSourceAddress(t *testing.T) {
	h, lk, g, _ := setup(t, nil, Options{Nodes: stubNodes{}})
	for _, tt := range []struct {
		name   string
		r      req
		status int
		kind   fleetlock.Kind
		value  string
	}{
		{"from the node", req{remote: "10.0.0.5:40000"}, 200, fleetlock.KindLockGranted, ""},
		{"from its IPv6 address", req{remote: "[2001:db8::5]:40000"}, 200, fleetlock.KindLockGranted, ""},
		{"IPv4-mapped", req{remote: "[::ffff:10.0.0.5]:40000"}, 200, fleetlock.KindLockGranted, ""},
		{"steady-state from the node", req{steady: true, remote: "10.0.0.5:1"}, 200, fleetlock.KindLockNotHeld, ""},
		{"from another node", req{remote: "10.0.0.6:40000"}, 403, fleetlock.KindForbidden, "request from 10.0.0.6, which is not an address of the node"},
		{"from elsewhere", req{remote: "192.0.2.1:40000"}, 403, fleetlock.KindForbidden, "192.0.2.1"},
		{"steady-state from another node", req{steady: true, remote: "10.0.0.6:40000"}, 403, fleetlock.KindForbidden, ""},
		{"other node's own request", req{id: idB, remote: "10.0.0.6:40000"}, 200, fleetlock.KindLockGranted, ""},
		{"forwarded-for from an untrusted peer", req{remote: "192.0.2.1:40000", xff: []string{"10.0.0.5"}}, 403, fleetlock.KindForbidden, "192.0.2.1"},
		{"unknown ID: unchanged answer", req{id: "ffffffffffffffffffffffffffffffff", remote: "192.0.2.1:1"}, 422, fleetlock.KindUnknownNode, ""},
		{"unknown ID steady-state: unchanged answer", req{steady: true, id: "ffffffffffffffffffffffffffffffff", remote: "192.0.2.1:1"}, 200, fleetlock.KindLockNotHeld, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := lk.calls()
			rec, rep := do(t, h, tt.r)
			assert.Equal(t, tt.status, rec.Code, rep.Value)
			assert.Equal(t, tt.kind, rep.Kind)
			assert.Contains(t, rep.Value, tt.value)
			assert.NotContains(t, rep.Value, "node-a", "the reply does not name the node")
			assert.Equal(t, tt.status == 403, before == lk.calls(), "only refused requests stay away from the lock")
		})
	}
	assert.NoError(t, testutil.CollectAndCompare(g, strings.NewReader(`
# HELP rebootmanager_access_refused_total FleetLock requests refused by access control, by reason: no_credentials, bad_credentials, wrong_group, wrong_node, other_group, source_address, busy.
# TYPE rebootmanager_access_refused_total counter
rebootmanager_access_refused_total{reason="other_group"} 0
rebootmanager_access_refused_total{reason="source_address"} 4
`)))
}

// TestGuardTrustedProxies: X-Forwarded-For counts only from a trusted proxy, and then
// its rightmost address that is not a trusted proxy is the client.
func TestGuardTrustedProxies(t *testing.T) {
	proxies, err := ParseTrustedProxies("10.1.0.0/16")
	require.NoError(t, err)
	h, lk, _, _ := setup(t, nil, Options{Nodes: stubNodes{}, TrustedProxies: proxies})
	for _, tt := range []struct {
		name   string
		remote string
		xff    []string
		status int
	}{
		{"direct from the node", "10.0.0.5:1", nil, 200},
		{"direct, forwarded-for ignored", "10.0.0.5:1", []string{"10.0.0.6"}, 200},
		{"spoofed forwarded-for from an untrusted peer", "10.0.0.6:1", []string{"10.0.0.5"}, 403},
		{"through a trusted proxy", "10.1.0.2:1", []string{"10.0.0.5"}, 200},
		{"through two trusted proxies", "10.1.0.2:1", []string{"10.0.0.5, 10.1.0.3"}, 200},
		{"header split over lines", "10.1.0.2:1", []string{"10.0.0.5", "10.1.0.3"}, 200},
		{"spoofed leftmost entry", "10.1.0.2:1", []string{"10.0.0.5, 10.0.0.6"}, 403},
		{"another node through the proxy", "10.1.0.2:1", []string{"10.0.0.6"}, 403},
		{"the proxy itself, no header", "10.1.0.2:1", nil, 403},
		{"garbage where the client should be", "10.1.0.2:1", []string{"10.0.0.5, unknown"}, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := lk.calls()
			rec, rep := do(t, h, req{remote: tt.remote, xff: tt.xff})
			assert.Equal(t, tt.status, rec.Code, rep.Value)
			assert.Equal(t, tt.status == 403, before == lk.calls())
		})
	}
}

// TestGuardBothChecks: credentials are checked first; both must pass.
func TestGuardBothChecks(t *testing.T) {
	h, lk, _, _ := setup(t, []string{"*:fleet:" + hash(t, "pw") + ":*"}, Options{Nodes: stubNodes{}})
	rec, _ := do(t, h, req{remote: "192.0.2.1:1"})
	assert.Equal(t, 401, rec.Code, "no credentials from the wrong address: 401 first")
	rec, _ = do(t, h, req{auth: true, user: "fleet", pass: "pw", remote: "192.0.2.1:1"})
	assert.Equal(t, 403, rec.Code)
	rec, _ = do(t, h, req{auth: true, user: "fleet", pass: "nope", remote: "10.0.0.5:1"})
	assert.Equal(t, 401, rec.Code)
	assert.Zero(t, lk.calls())
	rec, _ = do(t, h, req{auth: true, user: "fleet", pass: "pw", remote: "10.0.0.5:1"})
	assert.Equal(t, 200, rec.Code)
	assert.Equal(t, 1, lk.calls())
}

// TestGuardNeverGrantsUnchecked: if the ID matched no node when the guard looked but
// the lock grants it anyway (the node appeared in between), the answer is not 2xx.
func TestGuardNeverGrantsUnchecked(t *testing.T) {
	lk := &stubLock{nodes: stubNodes{}, grantUnknown: true}
	g := NewGuard(lk, Options{Nodes: stubNodes{}})
	h := fleetlock.NewHandler(g, fleetlock.Options{})
	rec, rep := do(t, h, req{remote: "192.0.2.1:1"})
	assert.Equal(t, 403, rec.Code, rep.Value)
	assert.Equal(t, fleetlock.KindForbidden, rep.Kind)
	assert.Equal(t, 1, lk.calls())
}

// TestGuardWithoutPeer: called without the handler (no Peer), every check fails.
func TestGuardWithoutPeer(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, creds, "*:a:"+hash(t, "a")+":*")
	cf, err := LoadCredentialsFile(creds, ReloadOptions{})
	require.NoError(t, err)
	nodes := stubNodes{idA: node("node-a", "10.0.0.5")}
	p := fleetlock.ClientParams{ID: idA, Group: "workers"}
	for _, opts := range []Options{{Credentials: cf}, {Nodes: nodes}} {
		lk := &stubLock{nodes: nodes}
		g := NewGuard(lk, opts)
		assert.Error(t, g.PreReboot(t.Context(), p))
		_, err := g.SteadyState(t.Context(), p)
		assert.Error(t, err)
		assert.Zero(t, lk.calls())
	}
}

// TestGuardOff: without credentials or nodes the guard only passes requests on.
func TestGuardOff(t *testing.T) {
	lk := &stubLock{nodes: stubNodes{idA: node("node-a")}, releasedOnSteady: true, preErr: fleetlock.ErrLockHeld}
	g := NewGuard(lk, Options{})
	p := fleetlock.ClientParams{ID: idA, Group: "g"}
	assert.ErrorIs(t, g.PreReboot(t.Context(), p), fleetlock.ErrLockHeld)
	released, err := g.SteadyState(t.Context(), p)
	assert.NoError(t, err)
	assert.True(t, released)
	assert.Equal(t, p, lk.lastPre)
	assert.Equal(t, p, lk.lastSteady)
	n, err := testutil.GatherAndCount(registry(t, g))
	require.NoError(t, err)
	assert.Zero(t, n, "no series for checks that are off")
}

// TestGuardCanceledWhileWaiting: a request that ends while waiting for a password
// check is api_unavailable, not granted.
func TestGuardCanceledWhileWaiting(t *testing.T) {
	_, lk, g, _ := setup(t, []string{"*:a:" + hash(t, "a") + ":*"}, Options{})
	for range cap(g.verify.sem) {
		g.verify.sem <- struct{}{}
	}
	ctx, cancel := context.WithCancel(fleetlock.ContextWithPeer(t.Context(),
		fleetlock.Peer{RemoteAddr: "10.0.0.5:1", HasBasicAuth: true, Username: "a", Password: "a"}))
	cancel()
	err := g.PreReboot(ctx, fleetlock.ClientParams{ID: idA, Group: "workers"})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, lk.calls())
}

func registry(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	return reg
}

// countCompares makes g's password checks count their bcrypt comparisons; gate, when
// not nil, holds every comparison until it is closed.
func countCompares(g *Guard, gate <-chan struct{}) *atomic.Int32 {
	var n atomic.Int32
	compare := g.verify.compare
	g.verify.compare = func(hash, password []byte) error {
		n.Add(1)
		if gate != nil {
			<-gate
		}
		return compare(hash, password)
	}
	return &n
}

// TestGuardComparisonsIndependentOfUser is issue 14's timing input: a wrong password
// cost two bcrypt comparisons for a user with two lines and one for an unknown user.
// Now every password check costs exactly one comparison whoever the user (an unknown
// user's password is compared with a hash of the file), a remembered success none,
// and a password over 72 bytes none.
func TestGuardComparisonsIndependentOfUser(t *testing.T) {
	h, _, g, _ := setup(t, []string{
		"workers:one:" + hash(t, "one-pw") + ":*",
		"workers:two:" + hash(t, "two-pw") + ":role=workers",
		"infra:two:" + hash(t, "two-pw") + ":role=infra",
		"*:three:" + hash(t, "three-pw") + ":role=a",
		"*:three:" + hash(t, "three-pw") + ":role=b",
		"*:three:" + hash(t, "three-pw") + ":role=workers",
	}, Options{Resolver: stubNodes{}})
	n := countCompares(g, nil)
	for _, tt := range []struct {
		name     string
		r        req
		status   int
		compares int32
	}{
		{"wrong password, one line", req{auth: true, user: "one", pass: "x"}, 401, 1},
		{"wrong password, two lines", req{auth: true, user: "two", pass: "x"}, 401, 1},
		{"wrong password, three lines", req{auth: true, user: "three", pass: "x"}, 401, 1},
		{"unknown user", req{auth: true, user: "nobody", pass: "x"}, 401, 1},
		{"unknown user, another group", req{auth: true, user: "nobody", pass: "x", group: "infra"}, 401, 1},
		{"wrong password, wrong group", req{auth: true, user: "one", pass: "x", group: "infra"}, 401, 1},
		{"right password, wrong group", req{auth: true, user: "one", pass: "one-pw", group: "infra"}, 403, 1},
		{"right password, remembered", req{auth: true, user: "one", pass: "one-pw"}, 200, 0},
		{"right password, last of three lines", req{auth: true, user: "three", pass: "three-pw"}, 200, 1},
		{"password over 72 bytes, known user", req{auth: true, user: "one", pass: strings.Repeat("p", 73)}, 401, 0},
		{"password over 72 bytes, unknown user", req{auth: true, user: "nobody", pass: strings.Repeat("p", 73)}, 401, 0},
	} {
		before := n.Load()
		rec, rep := do(t, h, tt.r)
		assert.Equal(t, tt.status, rec.Code, "%s: %+v", tt.name, rep)
		assert.Equal(t, tt.compares, n.Load()-before, "%s: bcrypt comparisons", tt.name)
	}
}

// TestGuardVerifyQueueBounded: password checks beyond the running ones and
// MaxQueuedChecks waiting are refused at once with too_many_requests, and a check
// answered from the cache never waits behind them.
func TestGuardVerifyQueueBounded(t *testing.T) {
	h, lk, g, _ := setup(t, []string{
		"workers:alice:" + hash(t, "alice-pw") + ":*",
		"workers:bob:" + hash(t, "bob-pw") + ":*",
	}, Options{MaxQueuedChecks: 2})
	rec, _ := do(t, h, req{auth: true, user: "alice", pass: "alice-pw"})
	require.Equal(t, 200, rec.Code, "alice's success is remembered")

	gate := make(chan struct{})
	n := countCompares(g, gate)
	busy := cap(g.verify.sem) + 2
	var wg sync.WaitGroup
	codes := make(chan int, busy)
	for i := range busy {
		wg.Go(func() {
			rec, _ := do(t, h, req{auth: true, user: "bob", pass: fmt.Sprintf("guess-%d", i)})
			codes <- rec.Code
		})
	}
	require.Eventually(t, func() bool { return len(g.verify.queue) == busy }, 10*time.Second, time.Millisecond)
	assert.Equal(t, int32(cap(g.verify.sem)), n.Load(), "comparisons running")

	rec, rep := do(t, h, req{auth: true, user: "mallory", pass: "guess"})
	assert.Equal(t, 429, rec.Code, "%+v", rep)
	assert.Equal(t, fleetlock.KindTooManyRequests, rep.Kind)
	assert.Equal(t, "10", rec.Header().Get("Retry-After"))
	rec, rep = do(t, h, req{auth: true, user: "bob", pass: "bob-pw"})
	assert.Equal(t, 429, rec.Code, "an uncached right password waits its turn too: %+v", rep)
	before := lk.calls()
	rec, rep = do(t, h, req{auth: true, user: "alice", pass: "alice-pw"})
	assert.Equal(t, 200, rec.Code, "a remembered success does not wait: %+v", rep)
	assert.Equal(t, before+1, lk.calls())

	close(gate)
	wg.Wait()
	close(codes)
	for c := range codes {
		assert.Equal(t, 401, c, "the queued guesses are answered")
	}
	assert.Equal(t, int32(busy), n.Load())
	assert.Zero(t, len(g.verify.queue))
	assert.Equal(t, 2.0, testutil.ToFloat64(g.refused.WithLabelValues(string(ReasonBusy))))
}

// TestGuardOtherGroup: with a Resolver and no other check, a request in another group
// than the node's hold is refused; one in the same group, or for a node that holds
// nothing (whatever group it last held or claimed in), passes.
func TestGuardOtherGroup(t *testing.T) {
	nodes := stubNodes{idA: node("node-a"), idB: node("node-b")}
	lk := &stubLock{nodes: nodes, releasedOnSteady: true}
	h := fleetlock.NewHandler(NewGuard(lk, Options{Resolver: nodes}), fleetlock.Options{})
	for _, tt := range []struct {
		name          string
		status, group string
		r             req
		code          int
	}{
		{"holds, same group", "Rebooting", "workers", req{steady: true}, 200},
		{"holds, other group: steady-state", "Rebooting", "infra", req{steady: true}, 403},
		{"holds, other group: pre-reboot", "Rebooting", "infra", req{}, 403},
		{"claims, other group: its own request replaces the claim", "Claiming", "infra", req{}, 200},
		{"released, other group", "Ready", "infra", req{}, 200},
		{"never held", "", "", req{}, 200},
		{"unknown ID", "Rebooting", "infra", req{id: "ffffffffffffffffffffffffffffffff"}, 422},
	} {
		nodes[idA].Annotations = map[string]string{lock.AnnotationStatus: tt.status, lock.AnnotationGroup: tt.group}
		before := lk.calls()
		rec, rep := do(t, h, tt.r)
		assert.Equal(t, tt.code, rec.Code, "%s: %+v", tt.name, rep)
		assert.Equal(t, tt.code == 403, before == lk.calls(), tt.name)
		if tt.code == 403 {
			assert.Equal(t, fleetlock.KindForbidden, rep.Kind)
			assert.Contains(t, rep.Value, `a slot of group "infra", not "workers"`, tt.name)
		}
	}
}

// TestGuardDuplicatesCheckOnce: 50 identical requests arriving together (a retrying
// client, a proxy) behind the FleetLock handler cost one password check, share calls
// of the lock, and all get the answer.
func TestGuardDuplicatesCheckOnce(t *testing.T) {
	h, lk, g, _ := setup(t, []string{"workers:alice:" + hash(t, "alice-pw") + ":role=workers"}, Options{Resolver: stubNodes{}})
	gate := make(chan struct{})
	n := countCompares(g, gate)
	var wg sync.WaitGroup
	codes := make(chan int, 50)
	for range 50 {
		wg.Go(func() {
			rec, _ := do(t, h, req{auth: true, user: "alice", pass: "alice-pw"})
			codes <- rec.Code
		})
	}
	require.Eventually(t, func() bool { return n.Load() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the others arrive and wait
	close(gate)
	wg.Wait()
	close(codes)
	for c := range codes {
		assert.Equal(t, 200, c)
	}
	assert.Equal(t, int32(1), n.Load(), "bcrypt comparisons")
	// A request that arrived only after the answer (a loaded machine) makes its own
	// call, answered from the cache: the count of lock calls is not exact.
	assert.Less(t, lk.calls(), 50, "calls of the lock")
}

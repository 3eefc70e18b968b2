package access

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// cluster is a real control plane with nodes, a real lock, a Guard in front of it and
// the FleetLock handler in front of that.
type cluster struct {
	env  *controlplane.Env
	lock *lock.Lock
	h    http.Handler
	ids  map[string]string // node name → Zincati ID
}

// newCluster creates the nodes (name → labels) with a unique prefix, and serves them
// through a Guard with the credentials lines, whose NODE_SELECTOR fields may name
// the nodes' labels. Every group has one slot.
func newCluster(t *testing.T, nodes map[string]map[string]string, lines []string) *cluster {
	t.Helper()
	env := controlplane.Shared(t)
	ctx := t.Context()
	c := &cluster{env: env, ids: map[string]string{}}
	for name, labels := range nodes {
		mid := simkubelet.RandomID()
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: mid, Labels: labels})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
		})
		c.ids[name], err = fleetlock.ZincatiID(mid)
		require.NoError(t, err)
	}
	lk, err := lock.New(env.Client, &locktest.Drained{}, lock.Options{Wait: 2 * time.Second})
	require.NoError(t, err)
	lctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	require.NoError(t, lk.Start(lctx))
	require.Eventually(t, func() bool {
		for _, id := range c.ids {
			if _, err := lk.Resolve(id); err != nil {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)
	path := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, path, lines...)
	creds, err := LoadCredentialsFile(path, ReloadOptions{})
	require.NoError(t, err)
	c.lock = lk
	c.h = fleetlock.NewHandler(NewGuard(lk, c.guardOptions(creds)), fleetlock.Options{})
	return c
}

// ask sends a request for node in group with user:password.
func (c *cluster) ask(t *testing.T, steady bool, node, group, user, pass string) (int, fleetlock.Reply) {
	t.Helper()
	rec, rep := do(t, c.h, req{steady: steady, id: c.ids[node], group: group, auth: true, user: user, pass: pass, remote: "127.0.0.1:1"})
	return rec.Code, rep
}

// state returns the node's lock status, group and whether it is cordoned, read from
// the API server.
func (c *cluster) state(t *testing.T, node string) (status, group string, cordoned bool) {
	t.Helper()
	n, err := c.env.Client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)
	return n.Annotations[lock.AnnotationStatus], n.Annotations[lock.AnnotationGroup], n.Spec.Unschedulable
}

// awaitCached waits until the lock's cache shows node in status.
func (c *cluster) awaitCached(t *testing.T, node, status string) {
	t.Helper()
	require.Eventually(t, func() bool {
		n, err := c.lock.Resolve(c.ids[node])
		return err == nil && n.Annotations[lock.AnnotationStatus] == status
	}, 10*time.Second, 10*time.Millisecond)
}

func uniq(t *testing.T) string {
	return strings.ToLower(fmt.Sprintf("b%d", time.Now().UnixNano()%1e9))
}

// TestOtherGroupsCredentialsCannotRelease is issue 14's class 4 input (1): with
// infra's password, a steady-state naming workers node w1 in group infra must not
// release w1 (mid-reboot), nor let w2 take the workers slot; neither may w1's own
// credentials with another group in the body.
func TestOtherGroupsCredentialsCannotRelease(t *testing.T) {
	p := uniq(t)
	w1, w2, i1 := p+"-w1", p+"-w2", p+"-i1"
	c := newCluster(t, map[string]map[string]string{
		w1: {"role": "workers"}, w2: {"role": "workers"}, i1: {"role": "infra"},
	}, []string{
		credLine("workers", "wk", "wk-pw", "role=workers"),
		credLine("infra", "inf", "inf-pw", "role=infra"),
	})
	code, rep := c.ask(t, false, w1, "workers", "wk", "wk-pw")
	require.Equal(t, 200, code, "%+v", rep)
	c.awaitCached(t, w1, "Rebooting")
	code, rep = c.ask(t, false, w2, "workers", "wk", "wk-pw")
	require.Equal(t, 409, code, "%+v", rep)

	for _, tt := range []struct{ name, user, pass, group string }{
		{"infra's password, infra in the body", "inf", "inf-pw", "infra"},
		{"w1's own password, infra in the body", "wk", "wk-pw", "infra"},
	} {
		code, rep = c.ask(t, true, w1, tt.group, tt.user, tt.pass)
		assert.Equal(t, 403, code, "%s: %+v", tt.name, rep)
		status, group, cordoned := c.state(t, w1)
		assert.Equal(t, "Rebooting", status, "%s: w1 still holds", tt.name)
		assert.Equal(t, "workers", group, tt.name)
		assert.True(t, cordoned, "%s: w1 still cordoned", tt.name)
	}
	time.Sleep(100 * time.Millisecond) // let a wrongful release reach the cache
	code, rep = c.ask(t, false, w2, "workers", "wk", "wk-pw")
	assert.Equal(t, 409, code, "w2 is not granted while w1 holds the only workers slot: %+v", rep)
	status, _, _ := c.state(t, w2)
	assert.NotEqual(t, "Rebooting", status)
}

// TestOtherGroupsCredentialsCannotTakeSlot is issue 14's class 4 input (2): infra's
// password cannot make workers node w3 ask in group infra; and once w3 holds in
// infra (granted by an admin credential for every node and group), w3's own
// request in group workers neither re-grants nor releases that hold while w2 holds
// the only workers slot.
func TestOtherGroupsCredentialsCannotTakeSlot(t *testing.T) {
	p := uniq(t)
	w2, w3, i1 := p+"-w2", p+"-w3", p+"-i1"
	c := newCluster(t, map[string]map[string]string{
		w2: {"role": "workers"}, w3: {"role": "workers"}, i1: {"role": "infra"},
	}, []string{
		credLine("workers", "wk", "wk-pw", "role=workers"),
		credLine("infra", "inf", "inf-pw", "role=infra"),
		credLine("*", "admin", "admin-pw", "*"),
	})
	code, rep := c.ask(t, false, w2, "workers", "wk", "wk-pw")
	require.Equal(t, 200, code, "%+v", rep)

	code, rep = c.ask(t, false, w3, "infra", "inf", "inf-pw")
	assert.Equal(t, 403, code, "infra's password for a workers node: %+v", rep)
	status, _, cordoned := c.state(t, w3)
	assert.NotEqual(t, "Rebooting", status, "w3 took no slot")
	assert.False(t, cordoned, "w3 not cordoned")

	// An admin grants w3 in infra's slot (in the test's power, not infra's password's).
	if status != "Rebooting" {
		code, rep = c.ask(t, false, w3, "infra", "admin", "admin-pw")
		require.Equal(t, 200, code, "%+v", rep)
	}
	c.awaitCached(t, w3, "Rebooting")
	code, rep = c.ask(t, false, w3, "workers", "wk", "wk-pw")
	assert.Equal(t, 403, code, "w3 holds in infra: a workers pre-reboot is no 2xx while w2 holds the workers slot: %+v", rep)
	code, rep = c.ask(t, true, w3, "workers", "wk", "wk-pw")
	assert.Equal(t, 403, code, "nor does a workers steady-state release infra's hold: %+v", rep)
	status, group, cordoned := c.state(t, w3)
	assert.Equal(t, "Rebooting", status)
	assert.Equal(t, "infra", group)
	assert.True(t, cordoned)
}

// credLine is a credentials line.
func credLine(group, user, pass, selector string) string {
	return group + ":" + user + ":" + hashT(pass) + ":" + selector
}

func (c *cluster) guardOptions(creds *CredentialsFile) Options {
	return Options{Credentials: creds} // the lock is the Resolver
}

package fleetsim_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

// A replica is killed (SIGKILL) while a node drains, and another left a claim behind
// when it died mid-claim: the surviving replica, then a restarted one, finish the
// rollout; no slot is over-granted and no node is left cordoned without a lock.
func TestReplicaKilled(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "k", Nodes: 4, Slots: 1}}
	h := newHarness(t, groups, 2, nil, "--stale-claim-age=3s")
	var once sync.Once
	killed := make(chan struct{})
	opts := fleetsim.Options{Name: "kill", Groups: groups, OnEvent: func(e fleetsim.Event) {
		if e.Phase == fleetsim.PhaseDraining {
			once.Do(func() {
				h.servers[0].Kill()
				close(killed)
			})
		}
	}}
	f := h.fleet(t, ctx, opts)
	// The residue of a replica killed mid-claim: a fresh claim on the first node.
	first := f.Nodes()[0]
	_, err := h.env.Client.CoreV1().Nodes().Patch(ctx, first, types.MergePatchType, []byte(`{"metadata":{
		"labels":{"rebootmanager/lock":"true"},
		"annotations":{"rebootmanager/status":"Claiming","rebootmanager/group":"k","rebootmanager/since":"`+time.Now().UTC().Format(time.RFC3339Nano)+`"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	go func() {
		<-killed
		time.Sleep(2 * time.Second)
		h.start(t) // a restarted replica takes the dead one's place in the rotation
	}()
	rep := roll(t, ctx, f)
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, rep.MostHeld["k"])
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
	}
}

// The API server stops for a while in the middle of a rollout: every request meanwhile
// is refused with 503 api_unavailable and Retry-After, nothing is granted, /readyz says
// so, and the rollout completes once the API server is back.
func TestAPIServerOutage(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "o", Nodes: 3, Slots: 1}}
	h := newHarness(t, groups, 2, nil)
	var mu sync.Mutex
	var down, up time.Time
	outage := make(chan struct{})
	var once sync.Once
	f := h.fleet(t, ctx, fleetsim.Options{Name: "outage", Groups: groups, Poll: 500 * time.Millisecond, OnEvent: func(e fleetsim.Event) {
		if e.Phase == fleetsim.PhaseDone {
			once.Do(func() { close(outage) })
		}
	}})
	probes := make(chan []fleetlock.Response, 1)
	go func() {
		<-outage
		mu.Lock()
		down = time.Now()
		mu.Unlock()
		h.env.StopAPIServer()
		time.Sleep(3 * time.Second) // the replicas' health probes notice
		var seen []fleetlock.Response
		for _, s := range h.servers {
			resp, err := http.Get(s.Admin + "/readyz")
			if assert.NoError(t, err) {
				resp.Body.Close()
				assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "/readyz while the API server is down")
			}
			c := fleetlock.Client{BaseURL: s.FleetLock}
			for _, id := range []string{"ffffffffffffffffffffffffffffffff"} {
				r, err := c.SteadyState(ctx, fleetlock.ClientParams{ID: id, Group: "o"})
				if assert.NoError(t, err) {
					seen = append(seen, r)
				}
			}
		}
		time.Sleep(3 * time.Second)
		mu.Lock()
		up = time.Now()
		mu.Unlock()
		assert.NoError(t, h.env.StartAPIServer(ctx))
		probes <- seen
	}()
	rep := roll(t, ctx, f)
	assert.Empty(t, rep.Violations)
	for _, r := range <-probes {
		assert.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
		assert.Equal(t, fleetlock.KindAPIUnavailable, r.Reply.Kind)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
		assert.False(t, n.Allowed.After(down) && n.Allowed.Before(up), "%s was told to reboot while the API server was down", n.Name)
	}
}

package fleetsim_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

// service plays a Kubernetes Service in front of the replicas: each request goes to
// the next ready backend, and a backend leaves the rotation before its pod is told to
// stop, as an endpoint does when its pod starts terminating.
type service struct {
	mu       sync.Mutex
	backends []*httputil.ReverseProxy
	next     atomic.Uint64
}

func (s *service) set(servers []*fleetsim.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backends = nil
	for _, srv := range servers {
		u, _ := url.Parse(srv.FleetLock)
		s.backends = append(s.backends, httputil.NewSingleHostReverseProxy(u))
	}
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b := s.backends[int(s.next.Add(1))%len(s.backends)]
	s.mu.Unlock()
	b.ServeHTTP(w, r)
}

// Issue 20 item 5: a rolling update of the Deployment in the middle of a rollout (two
// replicas behind a Service; one new replica starts, an old one leaves the rotation and
// gets SIGTERM, twice over, while nodes drain and wait). The rollout finishes with
// every invariant held: the drains go on in the new replicas.
func TestRolloutThroughRollingUpdate(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	groups := []fleetsim.Group{{Name: "r", Nodes: 6, Slots: 1}}
	h := newHarness(t, groups, 2, nil)
	svc := &service{}
	svc.set(h.servers)
	front := httptest.NewServer(svc)
	t.Cleanup(front.Close)

	var once sync.Once
	updated := make(chan struct{})
	// Reboots of 2 s: the rollout outlasts the update, which overlaps drains and waits.
	opts := fleetsim.Options{Name: "roll", Groups: groups, Endpoints: []string{front.URL + "/"}, Downtime: 2 * time.Second,
		OnEvent: func(e fleetsim.Event) {
			if e.Phase == fleetsim.PhaseDraining {
				once.Do(func() { close(updated) })
			}
		}}
	f := h.fleet(t, ctx, opts)
	stopped := make(chan error, 2)
	var done atomic.Value // time.Time: when the update finished
	go func() {
		defer func() { done.Store(time.Now()) }()
		<-updated
		for i := range 2 { // maxSurge 1, maxUnavailable 0
			old := h.servers[i]
			h.start(t)
			live := append([]*fleetsim.Server{}, h.servers[i+1:]...)
			svc.set(live)
			stopped <- old.Stop()
			time.Sleep(time.Second)
		}
	}()
	rep := roll(t, ctx, f)
	for range 2 {
		require.NoError(t, <-stopped, "an old replica stops cleanly on SIGTERM")
	}
	end, _ := done.Load().(time.Time)
	require.False(t, end.IsZero())
	assert.True(t, end.Before(rep.End), "the update ended %s before the rollout did", rep.End.Sub(end))
	assert.Empty(t, rep.Violations)
	assert.Equal(t, 1, rep.MostHeld["r"])
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
	}
}

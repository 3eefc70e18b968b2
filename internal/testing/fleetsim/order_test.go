package fleetsim_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

// Issue 17 item 4: workers go after control-plane. Every node stages its update at
// once, two replicas serve. The checker follows the Nodes' annotations in the order
// the API server applied them: no worker took a slot while a control-plane node held,
// claimed or waited (since before the worker's claim: the lock's fresh read comes
// after it); and every node rebooted once.
func TestRolloutGroupOrder(t *testing.T) {
	serverBinary(t, nil) // before the test's clock starts: a cold build takes minutes
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(`apiVersion: rebootmanager/v1
groups:
  control-plane: {slots: 1}
  workers: {slots: 2, after: [control-plane]}
`), 0o600))
	groups := []fleetsim.Group{
		{Name: "control-plane", Nodes: 3, Slots: 1},
		{Name: "workers", Nodes: 4, Slots: 2, After: []string{"control-plane"}},
	}
	h := newHarness(t, groups, 2, nil, "--config="+config)
	rep := roll(t, ctx, h.fleet(t, ctx, fleetsim.Options{Name: "order", Groups: groups}))
	assert.Empty(t, rep.Violations)
	assert.Zero(t, rep.OrderRaces, "a control-plane node began to wait while a worker's grant was under way")
	// In the simulator's timeline: each worker took its slot after the last
	// control-plane node was told to reboot (it held its slot until after that).
	var lastControlPlane time.Time
	for _, n := range rep.Nodes {
		assert.False(t, n.Released.IsZero(), "%s finished", n.Name)
		if n.Group == "control-plane" && n.Allowed.After(lastControlPlane) {
			lastControlPlane = n.Allowed
		}
	}
	for _, n := range rep.Nodes {
		if n.Group == "workers" {
			assert.True(t, n.Locked.After(lastControlPlane), "%s took a slot at %s, before the last control-plane node was told to reboot at %s",
				n.Name, n.Locked.Format(time.StampMilli), lastControlPlane.Format(time.StampMilli))
		}
	}
	refused := 0
	for _, s := range h.servers {
		m, err := s.Metrics()
		require.NoError(t, err)
		for _, v := range regexp.MustCompile(`rebootmanager_refusals_total\{group="workers",reason="RebootGroupOrder"\} (\d+)`).FindAllStringSubmatch(m, -1) {
			k, _ := strconv.Atoi(v[1])
			refused += k
		}
	}
	assert.Positive(t, refused, "workers refused with group_order")
	h.env.AwaitNodeEvent(t, "order-workers-00", "RebootGroupOrder", `group "workers" goes after "control-plane": not done yet: order-control-plane-0`)
}

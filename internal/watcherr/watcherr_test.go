package watcherr

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// forbidden is the API server's 403 as the reflector wraps it.
func forbidden(gr schema.GroupResource, name, reason string) error {
	return fmt.Errorf("failed to list *v1.Thing: %w", apierrors.NewForbidden(gr, name, errors.New(reason)))
}

// A 403 names the informer, who was refused, the verb, the resource and the RBAC rule
// that is missing: a Role for a namespaced resource, with the resource name when the
// informer watches one object.
func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{{
		forbidden(schema.GroupResource{Resource: "configmaps"}, "wrong-pause",
			`User "system:serviceaccount:reboot-manager:reboot-manager" cannot list resource "configmaps" in API group "" in the namespace "reboot-manager"`),
		`the pause ConfigMap: ServiceAccount reboot-manager/reboot-manager may not list configmaps "wrong-pause" in namespace reboot-manager: ` +
			`RBAC rule missing: {apiGroups: [""], resources: [configmaps], resourceNames: [wrong-pause], verbs: [list, watch]} ` +
			`in a Role in namespace reboot-manager bound to ServiceAccount reboot-manager/reboot-manager`,
	}, {
		forbidden(schema.GroupResource{Resource: "nodes"}, "",
			`User "system:serviceaccount:rm:rm" cannot watch resource "nodes" in API group "" at the cluster scope`),
		`the pause ConfigMap: ServiceAccount rm/rm may not watch nodes at the cluster scope: ` +
			`RBAC rule missing: {apiGroups: [""], resources: [nodes], verbs: [list, watch]} in a ClusterRole bound to ServiceAccount rm/rm`,
	}, {
		forbidden(schema.GroupResource{Group: "policy", Resource: "poddisruptionbudgets"}, "",
			`User "alice" cannot list resource "poddisruptionbudgets" in API group "policy" at the cluster scope`),
		`the pause ConfigMap: user "alice" may not list poddisruptionbudgets at the cluster scope: ` +
			`RBAC rule missing: {apiGroups: ["policy"], resources: [poddisruptionbudgets], verbs: [list, watch]} in a ClusterRole bound to user "alice"`,
	}, {
		fmt.Errorf("failed to list *v1.Node: %w", apierrors.NewUnauthorized("Unauthorized")),
		`the pause ConfigMap: the API server does not accept the credentials (an expired or revoked token, or a wrong kubeconfig)`,
	}} {
		got := describe("the pause ConfigMap", tc.err)
		assert.Equal(t, tc.want+" (the API server said: "+tc.err.Error()+")", got)
	}
}

// informer is an informer whose sync and watch error handler the test controls.
type informer struct {
	cache.SharedIndexInformer
	synced  bool
	handler cache.WatchErrorHandlerWithContext
}

func (i *informer) HasSynced() bool { return i.synced }

func (i *informer) SetWatchErrorHandlerWithContext(h cache.WatchErrorHandlerWithContext) error {
	i.handler = h
	return nil
}

// Refusals are recorded, and forgotten once the informer syncs or lists again (its
// resource version moves), or after forgetAfter without one; other errors are not
// recorded.
func TestErrors(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	e := New(nil)
	e.now = func() time.Time { return now }
	versions := map[*cache.Reflector]string{}
	e.version = func(r *cache.Reflector) string { return versions[r] }
	r1, r2 := &cache.Reflector{}, &cache.Reflector{}
	nodes, drains := &informer{}, &informer{}
	require.NoError(t, e.Watch("the node cache", nodes))
	require.NoError(t, e.Watch("the drains", drains))
	refused := forbidden(schema.GroupResource{Resource: "nodes"}, "",
		`User "u" cannot list resource "nodes" in API group "" at the cluster scope`)
	ctx := t.Context()

	require.NoError(t, e.Err())
	nodes.handler(ctx, r1, io.ErrUnexpectedEOF)
	nodes.handler(ctx, r1, apierrors.NewInternalError(errors.New("etcd")))
	require.NoError(t, e.Err(), "only refusals are recorded")

	nodes.handler(ctx, r1, refused)
	require.Error(t, e.Err())
	assert.Contains(t, e.Err().Error(), `the node cache: user "u" may not list nodes`)
	require.Error(t, e.ErrOf(nodes))
	require.NoError(t, e.ErrOf(drains))
	versions[r1] = "42" // listed, but not synced yet: still refused
	require.Error(t, e.Err())
	nodes.synced = true
	require.NoError(t, e.Err(), "synced")

	nodes.handler(ctx, r1, refused) // refused again, after it synced: stale
	drains.handler(ctx, r2, refused)
	assert.Contains(t, e.Err().Error(), "the drains: ")
	assert.Contains(t, e.Err().Error(), "; the node cache: ", "every refusal, sorted")
	versions[r1] = "43" // listed again
	require.NoError(t, e.ErrOf(nodes))
	now = now.Add(forgetAfter - time.Second)
	require.Error(t, e.Err())
	now = now.Add(2 * time.Second)
	require.NoError(t, e.Err(), "a stopped informer's refusal is forgotten")
}

package policy_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/policy"
)

// shortWatches makes every watch end after a second (the reflector asks for 5 to 10
// minutes), so that a permission revoked shows at the next watch, not minutes later.
type shortWatches struct{ next http.RoundTripper }

func (s shortWatches) RoundTrip(req *http.Request) (*http.Response, error) {
	if q := req.URL.Query(); q.Get("watch") == "true" {
		req = req.Clone(req.Context())
		q.Set("timeoutSeconds", "1")
		req.URL.RawQuery = q.Encode()
	}
	return s.next.RoundTrip(req)
}

// Issue 18 item 7: a pause ConfigMap that does not exist is no pause; one that cannot
// be read (its RoleBinding gone: 403) fails closed, as a pause whose reason names the
// permission, not as the last state the cache saw.
func TestPauseUnreadableFailsClosed(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	sa := "rm-pause"
	_, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pause"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{policy.DefaultPauseConfigMap}, Verbs: []string{"list", "watch"}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pause"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pause"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}
	_, err = env.Client.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
	require.NoError(t, err)
	_, kubeconfig := env.ServiceAccountClient(t, ns, sa)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return shortWatches{rt} })
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	c, err := policy.Parse(nil)
	require.NoError(t, err)
	p := policy.New(policy.Options{Config: func() *policy.Config { return c }, Client: client, Namespace: ns})
	require.NoError(t, p.Start(ctx))
	require.NoError(t, admit(p, "n"), "no pause ConfigMap: not paused")
	_, paused := p.Paused()
	assert.False(t, paused)

	require.NoError(t, env.Client.RbacV1().RoleBindings(ns).Delete(ctx, "pause", metav1.DeleteOptions{}))
	err = awaitAdmit(t, p, "refused once the pause ConfigMap cannot be read", func(err error) bool { return err != nil })
	require.ErrorIs(t, err, fleetlock.ErrPaused, "%v", err)
	t.Logf("refusal: %v", err)
	for _, want := range []string{
		"the pause ConfigMap " + ns + "/" + policy.DefaultPauseConfigMap + " cannot be read",
		"ServiceAccount " + ns + "/" + sa + " may not ",
		`resources: [configmaps], resourceNames: [reboot-manager-pause], verbs: [list, watch]} in a Role in namespace ` + ns,
	} {
		assert.Contains(t, err.Error(), want)
	}
	reason, paused := p.Paused()
	assert.True(t, paused, "status and rebootmanager_paused show it as paused")
	assert.Contains(t, reason, "cannot be read")
}

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/policy"
)

// Issue 18 item 7: a server whose ServiceAccount lacks a permission says which in
// /readyz (503) and its log, not "node cache not synced": a --pause-configmap that the
// Role's resourceNames do not name, then a ClusterRole without nodes. Granted, the
// same server becomes ready.
func TestReadyzNamesMissingPermission(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	sa := "rm-readyz"
	_, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	require.NoError(t, err)
	subjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}
	// As the chart's Role: the one pause ConfigMap.
	_, err = env.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pause"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{policy.DefaultPauseConfigMap}, Verbs: []string{"list", "watch"}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pause"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pause"}, Subjects: subjects}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, kubeconfig := env.ServiceAccountClient(t, ns, sa)
	who := "ServiceAccount " + ns + "/" + sa

	// A misconfigured pause ConfigMap name.
	srv := serveInProcess(t, kubeconfig, "--namespace="+ns, "--pause-configmap=reboot-manager-pasue")
	body := srv.awaitReadyz(t, http.StatusServiceUnavailable, "RBAC rule missing")
	t.Logf("/readyz: %s", body)
	for _, want := range []string{
		"the pause ConfigMap: " + who + ` may not list configmaps "reboot-manager-pasue" in namespace ` + ns,
		`{apiGroups: [""], resources: [configmaps], resourceNames: [reboot-manager-pasue], verbs: [list, watch]} in a Role in namespace ` + ns,
	} {
		assert.Contains(t, body, want)
	}
	for _, want := range []string{`level=ERROR msg="list and watch refused by the API server: informer cannot sync" informer="the pause ConfigMap"`,
		"may not list configmaps", "resourceNames: [reboot-manager-pasue]"} {
		assert.Contains(t, srv.logs.String(), want, "the log says it too")
	}
	assert.NotContains(t, body, "node cache not synced")
	srv.stop()

	// The right name; nodes not granted.
	srv = serveInProcess(t, kubeconfig, "--namespace="+ns)
	body = srv.awaitReadyz(t, http.StatusServiceUnavailable, "the node cache: ")
	t.Logf("/readyz: %s", body)
	assert.Contains(t, body, "the node cache: "+who+" may not list nodes at the cluster scope: "+
		`RBAC rule missing: {apiGroups: [""], resources: [nodes], verbs: [list, watch]} in a ClusterRole bound to `+who)
	assert.NotContains(t, body, "pause ConfigMap")
	resp, err := http.Get(srv.admin + "/status")
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Contains(t, string(b), "the node cache: "+who+" may not list nodes", "/status says why it has nothing to show")

	// Granted what the server lists and watches: the same server becomes ready.
	name := "rm-readyz-" + ns
	_, err = env.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes", "pods"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"volumeattachments"}, Verbs: []string{"list", "watch"}},
		}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}, Subjects: subjects}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		cctx := context.WithoutCancel(t.Context())
		_ = env.Client.RbacV1().ClusterRoleBindings().Delete(cctx, name, metav1.DeleteOptions{})
		_ = env.Client.RbacV1().ClusterRoles().Delete(cctx, name, metav1.DeleteOptions{})
	})
	srv.awaitReadyz(t, http.StatusOK, "ok")
}

// inProcess is a server run in this process, as reboot-manager serve runs it.
type inProcess struct {
	admin string
	logs  *fleetsim.LogBuffer
	stop  func()
}

func serveInProcess(t *testing.T, kubeconfig string, args ...string) *inProcess {
	t.Helper()
	ports, err := controlplane.FreePorts(2)
	require.NoError(t, err)
	c, err := parseConfig(append([]string{"--kubeconfig=" + kubeconfig,
		fmt.Sprintf("--listen-address=127.0.0.1:%d", ports[0]), fmt.Sprintf("--metrics-address=127.0.0.1:%d", ports[1])}, args...),
		env(nil), io.Discard)
	require.NoError(t, err)
	s := &inProcess{admin: fmt.Sprintf("http://127.0.0.1:%d", ports[1]), logs: &fleetsim.LogBuffer{}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, slog.New(slog.NewTextHandler(s.logs, nil))) }()
	s.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("logs:\n%s", s.logs.String())
		}
	})
	return s
}

// awaitReadyz waits until /readyz answers code with a body containing want, and
// returns the body.
func (s *inProcess) awaitReadyz(t *testing.T, code int, want string) string {
	t.Helper()
	var last string
	ok := assert.Eventually(t, func() bool {
		resp, err := http.Get(s.admin + "/readyz")
		if err != nil {
			last = err.Error()
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		return resp.StatusCode == code && strings.Contains(string(b), want)
	}, 3*time.Minute, 200*time.Millisecond)
	require.True(t, ok, "/readyz never answered %d with %q; last: %s", code, want, last)
	return last
}

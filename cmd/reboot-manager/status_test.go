package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
)

// `status` reads the lock, the policy and the pause from the cluster; `release` frees
// a slot with a conditioned write and uncordons only what reboot-manager cordoned; the
// server's /status shows the same from its caches.
func TestStatusAndRelease(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	var nodes []string
	for i := range 3 {
		name := fmt.Sprintf("status-%d", i)
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: simkubelet.RandomID()})
		require.NoError(t, err)
		nodes = append(nodes, name)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
	}
	holder, cordonedHolder, held := nodes[0], nodes[1], nodes[2]
	patch := func(node, p string) {
		t.Helper()
		_, err := env.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(p), metav1.PatchOptions{})
		require.NoError(t, err)
	}
	since := time.Now().Add(-5 * time.Minute).UTC().Format(time.RFC3339Nano)
	hold := func(node, was string) {
		patch(node, `{"metadata":{"labels":{"rebootmanager/lock":"true"},"annotations":{"rebootmanager/status":"Rebooting",
			"rebootmanager/group":"workers","rebootmanager/since":"`+since+`","rebootmanager/was-unschedulable":"`+was+`"}},
			"spec":{"unschedulable":true}}`)
	}
	hold(holder, "false")
	hold(cordonedHolder, "true")
	patch(held, `{"metadata":{"annotations":{"rebootmanager/hold":"disk swap"}}}`)
	// A pod the drain would still have to evict, on the holder.
	_, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec:       corev1.PodSpec{NodeName: holder, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/x"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-config"},
		Data: map[string]string{"config.yaml": `
apiVersion: rebootmanager/v1
groups:
  workers:
    slots: 2
    windows: [{days: [Mon], start: "01:00", end: "02:00", timeZone: Europe/Paris}]
    minGap: 5m
blockers:
  pods: [{selector: "app=backup"}]
`},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: policy.DefaultPauseConfigMap}, Data: map[string]string{"reason": "change freeze"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	getenv := func(k string) string { return map[string]string{"KUBECONFIG": env.Kubeconfig}[k] }
	var out, errOut bytes.Buffer
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns}, getenv, &out, &errOut), errOut.String())
	text := out.String()
	t.Logf("status:\n%s", text)
	for _, want := range []string{
		"PAUSED: change freeze",
		"workers  2      2        0       ", // slots, holders, claims
		"Mon 01:00-02:00 Europe/Paris",
		holder + "  workers  Rebooting  5m0s  1 pod left to evict",
		cordonedHolder + "  workers  Rebooting  5m0s  drained",
		held + "   disk swap",
		"pods     clear  -",
	} {
		assert.Contains(t, text, want)
	}

	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "-o", "json"}, getenv, &out, &errOut))
	var s status
	require.NoError(t, json.Unmarshal(out.Bytes(), &s))
	assert.Equal(t, "cluster", s.Source)
	require.NotNil(t, s.Paused)
	assert.Equal(t, "change freeze", s.Paused.Reason)
	var workers *groupStatus
	for i := range s.Groups {
		if s.Groups[i].Name == "workers" {
			workers = &s.Groups[i]
		}
	}
	require.NotNil(t, workers)
	assert.Equal(t, groupStatus{Name: "workers", Slots: 2, Holders: 2, WindowOpen: workers.WindowOpen,
		Windows: []string{"Mon 01:00-02:00 Europe/Paris"}, MinGap: "5m0s", After: []string{}}, *workers)

	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "-o", "yaml"}, getenv, &out, &errOut))
	var fromYAML status
	require.NoError(t, yaml.UnmarshalStrict(out.Bytes(), &fromYAML), "%s", out.String())
	assert.Equal(t, s.Groups, fromYAML.Groups)
	assert.Equal(t, s.Paused, fromYAML.Paused)
	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"-n", ns, "-o", "wide"}, getenv, &out, &errOut))
	assert.Regexp(t, `(?m)^`+holder+`\s+workers\s+Rebooting\s+5m0s\s+1 pod left to evict\s+-\s+\d{4}-\d\d-\d\dT`, out.String())
	err = statusCommand(ctx, []string{"--namespace=" + ns, "-o", "xml"}, getenv, &out, &errOut)
	assert.ErrorContains(t, err, "-o must be one of text, wide, json, yaml")

	// The server's /status: the same lock, from its cache, with its live blockers.
	srv := startServer(t, env.Kubeconfig, "--namespace="+ns)
	resp, err := http.Get(srv.Admin + "/status")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var live status
	require.NoError(t, json.Unmarshal(body, &live))
	assert.Equal(t, "server", live.Source)
	require.NotNil(t, live.Paused)
	var liveHolders []string
	for _, h := range live.Holders {
		liveHolders = append(liveHolders, h.Node)
		assert.Equal(t, "not started by this replica", h.Drain)
	}
	assert.ElementsMatch(t, []string{holder, cordonedHolder}, liveHolders)
	require.NoError(t, srv.Stop())

	// release
	out.Reset()
	require.NoError(t, releaseCommand(ctx, []string{holder}, getenv, &out, &errOut))
	assert.Equal(t, "released the reboot slot of node "+holder+"; uncordoned\n", out.String())
	n, err := env.Client.CoreV1().Nodes().Get(ctx, holder, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, n.Spec.Unschedulable)
	assert.Equal(t, string(lock.StateReady), n.Annotations[lock.AnnotationStatus])
	assert.NotContains(t, n.Labels, lock.LabelLock)

	out.Reset()
	require.NoError(t, releaseCommand(ctx, []string{cordonedHolder}, getenv, &out, &errOut))
	assert.Contains(t, out.String(), "left cordoned (it was cordoned before reboot-manager took it)")
	n, err = env.Client.CoreV1().Nodes().Get(ctx, cordonedHolder, metav1.GetOptions{})
	require.NoError(t, err)
	assert.True(t, n.Spec.Unschedulable, "an operator's cordon stays")

	err = releaseCommand(ctx, []string{holder}, getenv, &out, &errOut)
	assert.ErrorContains(t, err, "holds no reboot slot: nothing released")
	err = releaseCommand(ctx, []string{"no-such-node"}, getenv, &out, &errOut)
	assert.ErrorContains(t, err, "not found")
	err = releaseCommand(ctx, nil, getenv, &out, &errOut)
	assert.ErrorContains(t, err, "one node name")
}

// `status` still answers when something is off: after an invalid edit of the policy
// ConfigMap it shows the lock and the error (not an error exit with nothing printed);
// a user who may not list pods sees the pods blocker as "cannot check: forbidden",
// not as active.
func TestStatusWhenSomethingIsOff(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	name := "status-off-0"
	_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: simkubelet.RandomID()})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	since := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	_, err = env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"labels":{"rebootmanager/lock":"true"},
		"annotations":{"rebootmanager/status":"Rebooting","rebootmanager/group":"workers","rebootmanager/since":"`+since+`"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-config"},
		Data:       map[string]string{"config.yaml": "apiVersion: rebootmanager/v1\ngroups: {workers: {slots: two}}\n"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	// A user who may read nodes and the namespace's ConfigMaps, not pods.
	_, err = env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ns + "-nodes"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.RbacV1().ClusterRoles().Delete(context.WithoutCancel(t.Context()), ns+"-nodes", metav1.DeleteOptions{})
	})
	_, err = env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-nodes"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: ns + "-nodes"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "viewer"}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.RbacV1().ClusterRoleBindings().Delete(context.WithoutCancel(t.Context()), ns+"-nodes", metav1.DeleteOptions{})
	})
	_, err = env.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "configmaps"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = env.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "configmaps"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "configmaps"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "viewer"}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, kubeconfig := env.ServiceAccountClient(t, ns, "viewer")
	getenv := func(k string) string { return map[string]string{"KUBECONFIG": kubeconfig}[k] }

	var out, errOut bytes.Buffer
	require.Eventually(t, func() bool { // until the RBAC is in force
		out.Reset()
		return statusCommand(ctx, []string{"--namespace=" + ns}, getenv, &out, &errOut) == nil
	}, 30*time.Second, 200*time.Millisecond, "status answers despite an invalid policy: %s", errOut.String())
	text := out.String()
	t.Logf("status:\n%s", text)
	assert.Contains(t, text, "POLICY NOT READABLE OR INVALID: ConfigMap "+ns+"/reboot-manager-config config.yaml: groups.slots: want int, got string")
	assert.Contains(t, text, name+"  workers  Rebooting", "the lock is shown")
	assert.Contains(t, text, "keep the last valid one they read")

	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "-o", "json"}, getenv, &out, &errOut))
	var s status
	require.NoError(t, json.Unmarshal(out.Bytes(), &s))
	require.NotNil(t, s.Policy)
	assert.Contains(t, s.Policy.Error, "slots: want int")
	assert.Empty(t, s.Groups, "the slots in force are unknown here")

	// Valid, with a pods blocker this user cannot check.
	cm.Data["config.yaml"] = "apiVersion: rebootmanager/v1\nblockers: {pods: [{selector: app=backup}]}\n"
	_, err = env.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	require.NoError(t, err)
	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns}, getenv, &out, &errOut))
	text = out.String()
	t.Logf("status:\n%s", text)
	assert.Contains(t, text, "pods     cannot check: forbidden  pods check failing: list pods app=backup: pods is forbidden")
	assert.Contains(t, text, "policy: ConfigMap "+ns+"/reboot-manager-config config.yaml")
}

// The server's status shows the policy file's error in force and the version it keeps.
func TestStatusShowsPolicyError(t *testing.T) {
	loaded := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	cfg, err := policy.ParseFile([]byte("apiVersion: rebootmanager/v1\ndefaults: {slots: 2}\n"))
	require.NoError(t, err)
	s := buildStatus(statusInput{now: loaded.Add(time.Hour), source: "server", config: cfg,
		paused: func() (string, bool) { return "", false },
		configState: policy.ConfigState{Source: "/etc/reboot-manager/config.yaml", Loaded: loaded,
			Error: `/etc/reboot-manager/config.yaml: empty document`, ErrorSince: loaded.Add(time.Minute), Failures: 1}})
	var out bytes.Buffer
	require.NoError(t, s.writeText(&out))
	assert.Contains(t, out.String(), "POLICY FILE INVALID since 2026-11-30T09:01:00Z, IGNORED: /etc/reboot-manager/config.yaml: empty document\n"+
		"policy in force: /etc/reboot-manager/config.yaml as read at 2026-11-30T09:00:00Z (shown below)")
	assert.Contains(t, out.String(), "default  2 ")
	out.Reset()
	require.NoError(t, s.writeJSON(&out))
	assert.Contains(t, out.String(), `"error": "/etc/reboot-manager/config.yaml: empty document"`)
}

// The server: a --config file emptied in place (config.yaml: "") keeps the policy in
// force, and /status and /metrics say so.
func TestServerKeepsPolicyWhenFileEmptied(t *testing.T) {
	env := controlplane.Shared(t)
	ns := env.Namespace(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ngroups: {etcd: {slots: 0}}\n"), 0o600))
	srv := startServer(t, env.Kubeconfig, "--namespace="+ns, "--config="+path)
	get := func() status {
		t.Helper()
		resp, err := http.Get(srv.Admin + "/status")
		require.NoError(t, err)
		defer resp.Body.Close()
		var s status
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
		return s
	}
	s := get()
	require.NotNil(t, s.Policy)
	assert.Equal(t, path, s.Policy.Source)
	assert.Empty(t, s.Policy.Error)
	assert.Contains(t, metrics(t, srv), "rebootmanager_config_last_reload_successful 1")

	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.Eventually(t, func() bool { return get().Policy.Error != "" }, 60*time.Second, 500*time.Millisecond)
	s = get()
	assert.Equal(t, path+`: empty document: a policy file starts with "apiVersion: rebootmanager/v1"`, s.Policy.Error)
	var etcd *groupStatus
	for i := range s.Groups {
		if s.Groups[i].Name == "etcd" {
			etcd = &s.Groups[i]
		}
	}
	require.NotNil(t, etcd, "the policy in force is kept")
	assert.Equal(t, 0, etcd.Slots)
	m := metrics(t, srv)
	assert.Contains(t, m, "rebootmanager_config_last_reload_successful 0")
	assert.Contains(t, m, "rebootmanager_config_reload_failures_total 1")
}

// Issue 16: status lists the replacement records (state, instance, group, age, why).
func TestStatusListsReplacements(t *testing.T) {
	now := time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC)
	s := buildStatus(statusInput{now: now, source: "cluster",
		paused: func() (string, bool) { return "", false },
		replacements: []replace.Record{{Node: "w3", State: replace.StateReplacing,
			Instance: replace.Instance{ID: "i-0123456789abcdef0", Group: "workers-asg"}, Group: "workers",
			Since: now.Add(-90 * time.Second), Why: "silent 10m0s after its reboot"}}})
	var out bytes.Buffer
	require.NoError(t, s.writeText(&out))
	assert.Regexp(t, `w3\s+Replacing\s+i-0123456789abcdef0\s+workers-asg\s+workers\s+1m30s\s+silent 10m0s after its reboot`, out.String())
	out.Reset()
	require.NoError(t, s.writeJSON(&out))
	assert.Contains(t, out.String(), `"node": "w3",`)
	assert.Contains(t, out.String(), `"state": "Replacing",`)
}

// The commands load kubeconfig as kubectl does: a $KUBECONFIG list (the later file
// adds contexts), --context to pick one, and a clear error for an unknown context.
func TestCommandKubeconfigAsKubectl(t *testing.T) {
	env := controlplane.Shared(t)
	dir := t.TempDir()
	raw, err := os.ReadFile(env.Kubeconfig)
	require.NoError(t, err)
	cfg, err := clientcmd.Load(raw)
	require.NoError(t, err)
	// A first file whose current context points nowhere, a second with the real one
	// under another name.
	broken := clientcmdapi.NewConfig()
	broken.Clusters["nowhere"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	broken.Contexts["nowhere"] = &clientcmdapi.Context{Cluster: "nowhere"}
	broken.CurrentContext = "nowhere"
	first := filepath.Join(dir, "first")
	require.NoError(t, clientcmd.WriteToFile(*broken, first))
	current := cfg.Contexts[cfg.CurrentContext]
	require.NotNil(t, current)
	cfg.Contexts = map[string]*clientcmdapi.Context{"test": current}
	cfg.CurrentContext = "test"
	second := filepath.Join(dir, "second")
	require.NoError(t, clientcmd.WriteToFile(*cfg, second))
	getenv := func(k string) string {
		if k == "KUBECONFIG" {
			return first + string(filepath.ListSeparator) + second
		}
		return ""
	}
	var out, errOut bytes.Buffer
	require.NoError(t, statusCommand(t.Context(), []string{"--context=test", "-n", "default"}, getenv, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "GROUP")
	err = statusCommand(t.Context(), []string{"--context=missing"}, getenv, &out, &errOut)
	assert.ErrorContains(t, err, `context "missing" does not exist`)
}

// waitingNode is a node that waits for a slot of group, as the lock marks it: since
// its wait began, last its latest request, until the deadline of its open request
// (zero: none written).
func waitingNode(name, group string, since, last, until time.Time) *corev1.Node {
	a := map[string]string{lock.AnnotationGroup: group,
		lock.AnnotationWaitingSince: since.UTC().Format(time.RFC3339Nano),
		lock.AnnotationLastRequest:  last.UTC().Format(time.RFC3339Nano)}
	if !until.IsZero() {
		a[lock.AnnotationRequestUntil] = until.UTC().Format(time.RFC3339Nano)
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: a,
		Labels: map[string]string{lock.LabelWaiting: "true"}}}
}

// Issue 17 item 3: the status shows, per group, who waits, since when, whether its
// request is open now (and until when) and its place in the order; a waiter that
// stopped asking is not shown; a reserved slot says until when.
func TestStatusShowsQueue(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	cfg, err := policy.ParseFile([]byte("apiVersion: rebootmanager/v1\ngroups: {workers: {slots: 1}, control-plane: {slots: 1}}\n"))
	require.NoError(t, err)
	reserved := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w9", Annotations: map[string]string{
		lock.AnnotationStatus: string(lock.StateRebooting), lock.AnnotationGroup: "workers",
		lock.AnnotationSince:         now.Add(-30 * time.Second).Format(time.RFC3339Nano),
		lock.AnnotationReservedUntil: now.Add(6 * time.Minute).Format(time.RFC3339Nano),
	}}}
	nodes := []*corev1.Node{
		// Open: its request is held until 12:20.
		waitingNode("w2", "workers", now.Add(-3*time.Minute), now.Add(-time.Minute), now.Add(20*time.Minute)),
		// Closed: no request open, its last one ended two minutes ago.
		waitingNode("w1", "workers", now.Add(-10*time.Minute), now.Add(-2*time.Minute), time.Time{}),
		// Stale: it stopped asking half an hour ago. Named first: shown, it would take place 1.
		waitingNode("w0-stale", "workers", now.Add(-2*time.Hour), now.Add(-30*time.Minute), time.Time{}),
		// Closed: the deadline of a request left behind has passed.
		waitingNode("c1", "control-plane", now.Add(-time.Minute), now.Add(-time.Minute), now.Add(-time.Second)),
		reserved,
	}
	// A reservation its node did not claim in time: the lock gives it back.
	unclaimed := reserved.DeepCopy()
	unclaimed.Name = "w8"
	unclaimed.Annotations[lock.AnnotationReservedUntil] = now.Add(-time.Second).Format(time.RFC3339Nano)
	nodes = append(nodes, unclaimed)
	s := buildStatus(statusInput{now: now, source: "cluster", nodes: nodes, config: cfg,
		paused: func() (string, bool) { return "", false }})

	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	assert.Equal(t, []waiterStatus{
		{Node: "c1", Group: "control-plane", Place: 1, Since: now.Add(-time.Minute), Age: "1m0s", LastRequest: at(-time.Minute)},
		{Node: "w1", Group: "workers", Place: 1, Since: now.Add(-10 * time.Minute), Age: "10m0s", LastRequest: at(-2 * time.Minute)},
		{Node: "w2", Group: "workers", Place: 2, Since: now.Add(-3 * time.Minute), Age: "3m0s", LastRequest: at(-time.Minute),
			RequestOpen: true, RequestUntil: at(20 * time.Minute)},
	}, s.Waiting)
	waiting := map[string]int{}
	for _, g := range s.Groups {
		waiting[g.Name] = g.Waiting
	}
	assert.Equal(t, map[string]int{"default": 0, "workers": 2, "control-plane": 1}, waiting)
	require.Len(t, s.Holders, 2)
	assert.Equal(t, at(-time.Second), s.Holders[0].ReservedUntil)
	assert.Equal(t, at(6*time.Minute), s.Holders[1].ReservedUntil)

	var out bytes.Buffer
	require.NoError(t, s.writeText(&out))
	text := out.String()
	t.Logf("status:\n%s", text)
	for _, want := range []string{
		`(?m)^GROUP\s+SLOTS\s+HOLDERS\s+CLAIMS\s+WAITING\s+WINDOW\s+MIN GAP\s+ORDER$`,
		`(?m)^workers\s+1\s+2\s+0\s+2\s+open \(no windows\)`,
		`(?m)^control-plane\s+1\s+0\s+0\s+1\s+`,
		`(?m)^w9\s+workers\s+Rebooting\s+30s\s+-\s+reserved until 2026-11-30T12:06:00Z$`,
		`(?m)^w8\s+workers\s+Rebooting\s+30s\s+-\s+reserved until 2026-11-30T11:59:59Z, passed: to be given back$`,
		`(?m)^WAITING NODE\s+GROUP\s+PLACE\s+WAITING SINCE\s+FOR\s+REQUEST$`,
		`(?m)^c1\s+control-plane\s+1\s+2026-11-30T11:59:00Z\s+1m0s\s+not open \(last 1m0s ago\)$`,
		`(?m)^w1\s+workers\s+1\s+2026-11-30T11:50:00Z\s+10m0s\s+not open \(last 2m0s ago\)$`,
		`(?m)^w2\s+workers\s+2\s+2026-11-30T11:57:00Z\s+3m0s\s+open until 2026-11-30T12:20:00Z$`,
	} {
		assert.Regexp(t, want, text)
	}
	assert.NotContains(t, text, "w0-stale")

	out.Reset()
	require.NoError(t, s.writeJSON(&out))
	var back status
	require.NoError(t, json.Unmarshal(out.Bytes(), &back))
	assert.Equal(t, s.Waiting, back.Waiting)
	assert.Contains(t, out.String(), `"reservedUntil": "2026-11-30T12:06:00Z"`)
	assert.Contains(t, out.String(), `"requestOpen": true,`)

	// Nobody waits: the table says so; the JSON has an empty list, not null.
	s = buildStatus(statusInput{now: now, source: "cluster", config: cfg, paused: func() (string, bool) { return "", false }})
	out.Reset()
	require.NoError(t, s.writeText(&out))
	assert.Contains(t, out.String(), "(no node waits for a slot)")
	out.Reset()
	require.NoError(t, s.writeJSON(&out))
	assert.Contains(t, out.String(), `"waiting": []`+"\n")
}

// Issue 17 item 3 against the real control plane: the status command (from a Node
// LIST) and a replica's /status (from its cache) show the queue marked on Nodes, and
// /metrics counts each group's waiters, with a series for every configured group from
// the start, and when its longest wait began; a stale waiter counts nowhere.
func TestStatusQueueAndWaitingGauge(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	// Groups of their own (the control plane is shared), without slots: no slot frees
	// and no reservation is made while the test looks.
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte(`apiVersion: rebootmanager/v1
groups:
  queue-a: {slots: 0}
  queue-b: {slots: 0}
  queue-r: {slots: 1}
  queue-none: {slots: 1}
`), 0o600))
	now := time.Now().UTC()
	ts := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
	marks := map[string]string{ // node: its annotations
		"queue-a1": `"rebootmanager/group":"queue-a","rebootmanager/waiting-since":"` + ts(-10*time.Minute) +
			`","rebootmanager/last-request":"` + ts(-2*time.Minute) + `"`,
		"queue-a2": `"rebootmanager/group":"queue-a","rebootmanager/waiting-since":"` + ts(-3*time.Minute) +
			`","rebootmanager/last-request":"` + ts(-time.Minute) + `","rebootmanager/request-until":"` + ts(time.Hour) + `"`,
		"queue-a0-stale": `"rebootmanager/group":"queue-a","rebootmanager/waiting-since":"` + ts(-3*time.Hour) +
			`","rebootmanager/last-request":"` + ts(-time.Hour) + `"`,
		"queue-b1": `"rebootmanager/group":"queue-b","rebootmanager/waiting-since":"` + ts(-time.Minute) +
			`","rebootmanager/last-request":"` + ts(-time.Minute) + `","rebootmanager/request-until":"` + ts(time.Hour) + `"`,
		"queue-r1": `"rebootmanager/status":"Rebooting","rebootmanager/group":"queue-r","rebootmanager/since":"` + ts(-time.Minute) +
			`","rebootmanager/was-unschedulable":"false","rebootmanager/reserved-until":"` + ts(time.Hour) + `"`,
	}
	for name, a := range marks {
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: simkubelet.RandomID()})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
		label := lock.LabelWaiting
		if strings.Contains(a, "Rebooting") {
			label = lock.LabelLock
		}
		_, err = env.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"`+label+`":"true"},"annotations":{`+a+`}}}`), metav1.PatchOptions{})
		require.NoError(t, err)
	}
	ours := func(s status) (waiting []string, reserved map[string]bool, counts map[string]int) {
		reserved, counts = map[string]bool{}, map[string]int{}
		for _, w := range s.Waiting {
			if strings.HasPrefix(w.Group, "queue-") {
				open := map[bool]string{true: "open", false: "not open"}[w.RequestOpen]
				waiting = append(waiting, fmt.Sprintf("%s %s %d %s", w.Group, w.Node, w.Place, open))
			}
		}
		for _, h := range s.Holders {
			if strings.HasPrefix(h.Group, "queue-") {
				reserved[h.Node] = h.ReservedUntil != nil
			}
		}
		for _, g := range s.Groups {
			if strings.HasPrefix(g.Name, "queue-") {
				counts[g.Name] = g.Waiting
			}
		}
		return waiting, reserved, counts
	}
	wantWaiting := []string{"queue-a queue-a1 1 not open", "queue-a queue-a2 2 open", "queue-b queue-b1 1 open"}
	wantCounts := map[string]int{"queue-a": 2, "queue-b": 1, "queue-r": 0, "queue-none": 0}

	// The command, from a Node LIST.
	getenv := func(k string) string { return map[string]string{"KUBECONFIG": env.Kubeconfig}[k] }
	var out, errOut bytes.Buffer
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "--config=" + config, "-o", "json"}, getenv, &out, &errOut), errOut.String())
	var s status
	require.NoError(t, json.Unmarshal(out.Bytes(), &s))
	waiting, reserved, counts := ours(s)
	assert.Equal(t, wantWaiting, waiting)
	assert.Equal(t, map[string]bool{"queue-r1": true}, reserved)
	assert.Equal(t, wantCounts, counts)
	out.Reset()
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "--config=" + config}, getenv, &out, &errOut), errOut.String())
	t.Logf("status:\n%s", out.String())
	assert.Regexp(t, `(?m)^queue-a2\s+queue-a\s+2\s+\S+\s+3m\d*s\s+open until `, out.String())
	assert.Regexp(t, `(?m)^queue-r1\s+queue-r\s+Rebooting\s+\S+\s+\S+\s+reserved until `, out.String())
	assert.NotContains(t, out.String(), "queue-a0-stale")

	// A replica, from its cache.
	srv := startServer(t, env.Kubeconfig, "--namespace="+ns, "--config="+config)
	get := func() status {
		t.Helper()
		resp, err := http.Get(srv.Admin + "/status")
		require.NoError(t, err)
		defer resp.Body.Close()
		var s status
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
		return s
	}
	require.Eventually(t, func() bool { w, _, _ := ours(get()); return len(w) == len(wantWaiting) }, 30*time.Second, 200*time.Millisecond)
	waiting, reserved, counts = ours(get())
	assert.Equal(t, wantWaiting, waiting)
	assert.Equal(t, map[string]bool{"queue-r1": true}, reserved)
	assert.Equal(t, wantCounts, counts)

	gauge := func(m, name, group string) (float64, bool) {
		for _, line := range strings.Split(m, "\n") {
			if v, ok := strings.CutPrefix(line, name+`{group="`+group+`"} `); ok {
				f, err := strconv.ParseFloat(v, 64)
				require.NoError(t, err, line)
				return f, true
			}
		}
		return 0, false
	}
	m := metrics(t, srv)
	for g, want := range wantCounts {
		v, ok := gauge(m, "rebootmanager_group_waiters", g)
		assert.True(t, ok, "rebootmanager_group_waiters{group=%q} is served", g)
		assert.Equal(t, float64(want), v, "rebootmanager_group_waiters{group=%q}", g)
	}
	for g, since := range map[string]time.Duration{"queue-a": -10 * time.Minute, "queue-b": -time.Minute} {
		v, ok := gauge(m, "rebootmanager_group_waiting_since_timestamp_seconds", g)
		assert.True(t, ok, "rebootmanager_group_waiting_since_timestamp_seconds{group=%q} is served", g)
		assert.InDelta(t, float64(now.Add(since).UnixNano())/1e9, v, 1e-3, "the longest wait of %s", g)
	}
	for _, g := range []string{"queue-r", "queue-none"} {
		_, ok := gauge(m, "rebootmanager_group_waiting_since_timestamp_seconds", g)
		assert.False(t, ok, "no waiting-since series for %s, where none waits", g)
	}
}

// Issue 17 item 3, end to end: a pre-reboot request held on a full group shows in a
// replica's /status and in the status command as waiting, request open, place 1, and
// counts in rebootmanager_group_waiters; once the request ends (Zincati gave up), the
// node still waits, with no request open.
func TestStatusShowsHeldRequest(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	ns := env.Namespace(t)
	config := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("apiVersion: rebootmanager/v1\ngroups: {queue-held: {slots: 1}}\n"), 0o600))
	holder, waiter := "queue-held-0", "queue-held-1"
	machineID := simkubelet.RandomID()
	for _, name := range []string{holder, waiter} {
		_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: map[bool]string{true: machineID}[name == waiter]})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
		})
	}
	_, err := env.Client.CoreV1().Nodes().Patch(ctx, holder, types.MergePatchType, []byte(`{"metadata":{"labels":{"rebootmanager/lock":"true"},
		"annotations":{"rebootmanager/status":"Rebooting","rebootmanager/group":"queue-held","rebootmanager/since":"`+
		time.Now().UTC().Format(time.RFC3339Nano)+`","rebootmanager/was-unschedulable":"false"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	id, err := fleetlock.ZincatiID(machineID)
	require.NoError(t, err)

	srv := startServer(t, env.Kubeconfig, "--namespace="+ns, "--config="+config, "--wait=10m")
	reqCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := (&fleetlock.Client{BaseURL: srv.FleetLock}).PreReboot(reqCtx, fleetlock.ClientParams{ID: id, Group: "queue-held"})
		done <- err
	}()
	get := func() status {
		resp, err := http.Get(srv.Admin + "/status")
		if err != nil {
			return status{}
		}
		defer resp.Body.Close()
		var s status
		_ = json.NewDecoder(resp.Body).Decode(&s)
		return s
	}
	queued := func(s status) *waiterStatus {
		for i := range s.Waiting {
			if s.Waiting[i].Node == waiter {
				return &s.Waiting[i]
			}
		}
		return nil
	}
	require.Eventually(t, func() bool { w := queued(get()); return w != nil && w.RequestOpen }, time.Minute, 200*time.Millisecond,
		"the held request shows in /status")
	w := queued(get())
	assert.Equal(t, "queue-held", w.Group)
	assert.Equal(t, 1, w.Place)
	require.NotNil(t, w.RequestUntil)
	assert.WithinDuration(t, time.Now().Add(10*time.Minute), *w.RequestUntil, 5*time.Minute, "the request's deadline, within --wait")
	assert.Contains(t, metrics(t, srv), `rebootmanager_group_waiters{group="queue-held"} 1`)

	getenv := func(k string) string { return map[string]string{"KUBECONFIG": env.Kubeconfig}[k] }
	var out, errOut bytes.Buffer
	require.NoError(t, statusCommand(ctx, []string{"--namespace=" + ns, "--config=" + config}, getenv, &out, &errOut), errOut.String())
	t.Logf("status:\n%s", out.String())
	assert.Regexp(t, `(?m)^`+waiter+`\s+queue-held\s+1\s+\S+\s+\S+\s+open until `, out.String())

	cancel() // Zincati gives up: the request ends without a 2xx
	assert.ErrorIs(t, <-done, context.Canceled, "the request ends with its context")
	require.Eventually(t, func() bool { w := queued(get()); return w != nil && !w.RequestOpen }, time.Minute, 200*time.Millisecond,
		"the node still waits, its request no longer open")
	w = queued(get())
	assert.Nil(t, w.RequestUntil)
	assert.NotNil(t, w.LastRequest)
}

// Issue 17 item 4: every group shows its after list, and a group held back by the
// order names the nodes that hold it back (holding, claiming, waiting; a stale waiter
// does not count).
func TestStatusShowsGroupOrder(t *testing.T) {
	now := time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC)
	cfg, err := policy.ParseFile([]byte("apiVersion: rebootmanager/v1\ngroups:\n  cp: {}\n  workers: {after: [cp]}\n  gpu: {after: [workers]}\n"))
	require.NoError(t, err)
	stamp := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	node := func(name string, a map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: a}}
	}
	nodes := []*corev1.Node{
		node("cp-0", map[string]string{lock.AnnotationStatus: "Rebooting", lock.AnnotationGroup: "cp", lock.AnnotationSince: stamp(now.Add(-time.Minute))}),
		node("cp-1", map[string]string{lock.AnnotationGroup: "cp", lock.AnnotationWaitingSince: stamp(now.Add(-time.Minute)),
			lock.AnnotationLastRequest: stamp(now.Add(-time.Minute))}),
		node("cp-2", map[string]string{lock.AnnotationGroup: "cp", lock.AnnotationWaitingSince: stamp(now.Add(-time.Hour)),
			lock.AnnotationLastRequest: stamp(now.Add(-time.Hour))}),
		node("w-0", map[string]string{lock.AnnotationGroup: "workers", lock.AnnotationWaitingSince: stamp(now.Add(-time.Minute)),
			lock.AnnotationLastRequest: stamp(now)}),
	}
	s := buildStatus(statusInput{now: now, source: "cluster", nodes: nodes, config: cfg,
		paused: func() (string, bool) { return "", false }})
	byName := map[string]groupStatus{}
	for _, g := range s.Groups {
		byName[g.Name] = g
	}
	assert.Equal(t, []string{}, byName["cp"].After)
	assert.Empty(t, byName["cp"].HeldBackBy)
	assert.Equal(t, []string{"cp"}, byName["workers"].After)
	assert.Equal(t, []lock.OrderBlocker{{Node: "cp-0", Group: "cp", State: lock.StateRebooting}, {Node: "cp-1", Group: "cp", State: lock.StateWaiting}},
		byName["workers"].HeldBackBy)
	assert.Equal(t, []lock.OrderBlocker{{Node: "w-0", Group: "workers", State: lock.StateWaiting}}, byName["gpu"].HeldBackBy)

	var out bytes.Buffer
	require.NoError(t, s.writeText(&out))
	assert.Regexp(t, `(?m)^cp\s+1\s+1\s+0\s+\d+\s+open \(no windows\)\s+-\s+-$`, out.String())
	assert.Regexp(t, `(?m)^workers\s+1\s+0\s+0\s+\d+\s+open \(no windows\)\s+-\s+after cp: held back by cp-0 \(Rebooting\), cp-1 \(Waiting\)$`, out.String())
	out.Reset()
	require.NoError(t, s.writeJSON(&out))
	assert.Contains(t, out.String(), `"after": []`)
	assert.Contains(t, out.String(), `"after": [
        "cp"
      ],`)
	assert.Contains(t, out.String(), `"heldBackBy": [`)
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/lock"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, env(nil), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, ":8080", c.listenAddress)
	assert.Equal(t, ":9090", c.metricsAddress)
	assert.Equal(t, 1, c.defaultSlots)
	assert.Equal(t, lock.DefaultWait, c.wait)
	assert.Equal(t, "json", c.logFormat)
	assert.Equal(t, slog.LevelInfo, c.logLevel)
	assert.Equal(t, evict.KeepRefusing, c.drain.FailurePolicy)
	assert.Empty(t, c.kubeconfig)
	assert.Empty(t, c.drain.Self)
	assert.Empty(t, c.tlsCertFile, "access control is off by default")
	assert.Empty(t, c.tlsKeyFile)
	assert.Empty(t, c.basicAuthFile)
	assert.False(t, c.verifySourceAddress)
	assert.Empty(t, c.trustedProxies)
}

func TestParseConfigAccess(t *testing.T) {
	c, err := parseConfig([]string{
		"--tls-cert-file=/tls/tls.crt", "--tls-key-file=/tls/tls.key", "--basic-auth-file=/auth/credentials",
		"--verify-source-address", "--trusted-proxies=10.1.0.0/16, 192.168.0.7", "--trusted-proxies=fd00::/8",
	}, env(nil), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "/tls/tls.crt", c.tlsCertFile)
	assert.Equal(t, "/tls/tls.key", c.tlsKeyFile)
	assert.Equal(t, "/auth/credentials", c.basicAuthFile)
	assert.True(t, c.verifySourceAddress)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.168.0.7/32"),
		netip.MustParsePrefix("fd00::/8")}, c.trustedProxies)
}

func TestParseConfig(t *testing.T) {
	c, err := parseConfig([]string{
		"--group-slots", "workers=3", "--group-slots=Infra.x=0", "--default-slots=2",
		"--drain-failure-policy=release", "--log-level=debug", "--log-format=text", "--wait=5m",
	}, env(map[string]string{"KUBECONFIG": "/k", "POD_NAMESPACE": "rm", "POD_NAME": "rm-1"}), io.Discard)
	require.NoError(t, err)
	slots := c.slotsConfig()
	assert.Equal(t, 3, *slots.Group("workers").Slots)
	assert.Equal(t, 0, *slots.Group("Infra.x").Slots)
	assert.Equal(t, 2, *slots.Group("default").Slots)
	assert.Equal(t, "rm", c.namespace, "the pause ConfigMap's namespace from POD_NAMESPACE")
	assert.Equal(t, evict.Release, c.drain.FailurePolicy)
	assert.Equal(t, slog.LevelDebug, c.logLevel)
	assert.Equal(t, "/k", c.kubeconfig)
	assert.Equal(t, "rm/rm-1", c.drain.Self)

	c, err = parseConfig([]string{"--kubeconfig=/flag"}, env(map[string]string{"KUBECONFIG": "/env"}), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "/flag", c.kubeconfig, "the flag wins over KUBECONFIG")
	assert.Equal(t, "reboot-manager", c.namespace)
	assert.Equal(t, 1, *c.slotsConfig().Group("any").Slots)
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--group-slots=workers"}, "want GROUP=N"},
		{[]string{"--group-slots=bad_name=1"}, "want GROUP=N"},
		{[]string{"--group-slots=w=-1"}, "N a whole number >= 0"},
		{[]string{"--group-slots=w=1", "--group-slots=w=2"}, `group "w" given twice`},
		{[]string{"--default-slots=-1"}, "--default-slots must be >= 0"},
		{[]string{"--wait=0s"}, "--wait must be above 0"},
		{[]string{"--eviction-parallelism=-1"}, "--eviction-parallelism must be above 0"},
		{[]string{"--evictions-per-second=0"}, "--evictions-per-second must be above 0"},
		{[]string{"--drain-timeout=-5m"}, "--drain-timeout must be above 0"},
		{[]string{"--wait=31m"}, "Zincati's 30-minute timeout"},
		{[]string{"--log-format=xml"}, "--log-format must be json or text"},
		{[]string{"--log-level=loud"}, "log-level"},
		{[]string{"--drain-failure-policy=yolo"}, "unknown drain failure policy"},
		{[]string{"--tls-cert-file=/c"}, "--tls-cert-file and --tls-key-file go together"},
		{[]string{"--tls-key-file=/k"}, "--tls-cert-file and --tls-key-file go together"},
		{[]string{"--trusted-proxies=10.0.0.0/8"}, "--trusted-proxies is only used by --verify-source-address"},
		{[]string{"--verify-source-address", "--trusted-proxies=10.0.0.0/33"}, `"10.0.0.0/33" is neither a CIDR`},
		{[]string{"--verify-source-address", "--trusted-proxies=proxy.example"}, "neither a CIDR (10.0.0.0/8) nor an IP address"},
		{[]string{"--verify-source-address=maybe"}, "verify-source-address"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--config=/p.yaml", "--default-slots=2"}, "go in the --config file"},
		{[]string{"--cloud=gcp"}, `--cloud must be aws (or unset), got "gcp"`},
		{[]string{"--config=/p.yaml", "--group-slots=w=2"}, "go in the --config file"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseConfig(tc.args, env(nil), io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	var out bytes.Buffer
	_, err := parseConfig([]string{"--help"}, env(nil), &out)
	assert.ErrorIs(t, err, flag.ErrHelp)
	for _, f := range []string{"kubeconfig", "listen-address", "metrics-address", "default-slots", "group-slots", "log-format", "log-level", "version",
		"tls-cert-file", "tls-key-file", "basic-auth-file", "verify-source-address", "trusted-proxies",
		"config", "namespace", "pause-configmap", "cloud"} {
		assert.Contains(t, out.String(), "-"+f, "--help lists --%s", f)
	}
}

// An invalid policy file stops the server before it starts anything, naming the field;
// a valid one is reloaded when it changes, and an invalid change keeps the one in force.
func TestPolicyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ngroups: {workers: {slots: -1}}"), 0o600))
	c, err := parseConfig([]string{"--config=" + path, "--kubeconfig=/nonexistent"}, env(nil), io.Discard)
	require.NoError(t, err)
	err = run(t.Context(), c, slog.New(slog.DiscardHandler))
	require.Error(t, err)
	assert.Equal(t, "--config: "+path+": groups.workers.slots: -1 is negative", err.Error())

	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ndefaults: {replaceAfter: 20m}"), 0o600))
	err = run(t.Context(), c, slog.New(slog.DiscardHandler))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "replaceAfter is set, but no --cloud says how to replace nodes")

	defer func(was time.Duration) { policyReloadInterval = was }(policyReloadInterval)
	policyReloadInterval = 10 * time.Millisecond
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ngroups: {workers: {slots: 2}}"), 0o600))
	var logs bytes.Buffer
	get, state, err := loadPolicy(c, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	assert.Equal(t, 2, *get().Group("workers").Slots)

	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ngroups: {workers: {slots: 3}}"), 0o600))
	require.Eventually(t, func() bool { return *get().Group("workers").Slots == 3 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ngroups: {workers: {slots: three}}"), 0o600))
	require.Eventually(t, func() bool { get(); return strings.Contains(logs.String(), "invalid policy file") }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, 3, *get().Group("workers").Slots, "an invalid change keeps the policy in force")
	assert.Contains(t, logs.String(), "slots: want int")
	assert.Contains(t, state().Error, "slots: want int", "the error in force is shown")
}

// client-go's klog lines go through the server's own slog handler, as JSON lines
// like the rest, tagged component=client-go.
func TestOneLogStream(t *testing.T) {
	var out bytes.Buffer
	c, err := parseConfig(nil, env(nil), io.Discard)
	require.NoError(t, err)
	routeKlog(c.logger(&out))
	t.Cleanup(func() { klog.ClearLogger() })
	klog.ErrorS(errors.New("connection refused"), "failed to list *v1.Node")
	klog.Flush()
	var rec map[string]any
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(out.Bytes()), &rec), "not one JSON line: %q", out.String())
	assert.Equal(t, "client-go", rec["component"])
	assert.Equal(t, "failed to list *v1.Node", rec["msg"])
	assert.Equal(t, "ERROR", rec["level"])
}

// KUBECONFIG may list several files, as kubectl reads it; the server merges them too.
// Before, it took the list for one path and failed.
func TestServerKubeconfigList(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config")
	require.NoError(t, os.WriteFile(file, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600))
	cfg, err := kubeConfig(filepath.Join(dir, "missing") + string(os.PathListSeparator) + file)
	require.NoError(t, err)
	assert.Equal(t, "https://127.0.0.1:6443", cfg.Host)
	_, err = kubeConfig(filepath.Join(dir, "missing"))
	assert.ErrorContains(t, err, "missing")
}

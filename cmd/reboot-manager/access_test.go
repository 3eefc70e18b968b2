package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/selfsigned"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
)

// TestAccessControl runs the binary with TLS, Basic authentication and source-address
// verification, and talks to it as Zincati does (https://user:password@host/): only
// the right credentials, for the right group, from the node's own address, get a
// reboot. The credentials file and the certificate are replaced while it runs.
func TestAccessControl(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	const name = "access-a"
	machineID := simkubelet.RandomID()
	_, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{MachineID: machineID})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	id, err := fleetlock.ZincatiID(machineID)
	require.NoError(t, err)

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o600))
		return p
	}
	cert1, key1 := testCert(t, "first")
	certFile, keyFile := write("tls.crt", cert1), write("tls.key", key1)
	credsFile := write("credentials", []byte("# group:user:bcrypt:nodes\nworkers:zincati:"+bcryptHash(t, "right")+":*\n"))

	s := startServer(t, env.Kubeconfig, "--wait=30s", "--tls-cert-file="+certFile, "--tls-key-file="+keyFile,
		"--basic-auth-file="+credsFile, "--verify-source-address")
	hostPort := strings.TrimSuffix(strings.TrimPrefix(s.FleetLock, "http://"), "/")
	cert2, key2 := testCert(t, "second")
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(cert1))
	require.True(t, roots.AppendCertsFromPEM(cert2))
	// client speaks as Zincati with base_url https://<userinfo>host:port/; every
	// request on a new connection, so each sees the certificate in force.
	client := func(userinfo string) *fleetlock.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}
		return &fleetlock.Client{BaseURL: "https://" + userinfo + hostPort + "/", HTTPClient: &http.Client{Transport: tr}}
	}
	p := fleetlock.ClientParams{ID: id, Group: "workers"}
	call := func(c *fleetlock.Client, steady bool, p fleetlock.ClientParams) fleetlock.Response {
		t.Helper()
		do := c.PreReboot
		if steady {
			do = c.SteadyState
		}
		resp, err := do(ctx, p)
		require.NoError(t, err)
		return resp
	}
	assertNoLock := func() {
		t.Helper()
		n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		assert.False(t, n.Spec.Unschedulable, "not cordoned")
		assert.Empty(t, n.Annotations[lock.AnnotationGroup], "no claim")
	}

	// Plain HTTP on the FleetLock port gets no FleetLock answer.
	plain, err := (&fleetlock.Client{BaseURL: "http://zincati:right@" + hostPort + "/"}).PreReboot(ctx, p)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, plain.StatusCode, "Go's TLS server answers plain HTTP with 400")
	assert.Empty(t, plain.Reply.Kind)

	// Refusals, each before the lock is consulted.
	for _, tt := range []struct {
		name     string
		userinfo string
		group    string
		status   int
		kind     fleetlock.Kind
	}{
		{"no credentials", "", "workers", 401, fleetlock.KindUnauthorized},
		{"wrong password", "zincati:wrong@", "workers", 401, fleetlock.KindUnauthorized},
		{"right password, other group", "zincati:right@", "infra", 403, fleetlock.KindForbidden},
	} {
		resp := call(client(tt.userinfo), false, fleetlock.ClientParams{ID: id, Group: tt.group})
		assert.Equal(t, tt.status, resp.StatusCode, "%s: %+v", tt.name, resp.Reply)
		assert.Equal(t, tt.kind, resp.Reply.Kind, tt.name)
		assert.False(t, resp.OK(), tt.name)
	}
	// The header Zincati would see on a 401.
	req, err := http.NewRequest(http.MethodPost, "https://"+hostPort+"/v1/pre-reboot",
		strings.NewReader(`{"client_params":{"id":"`+id+`","group":"workers"}}`))
	require.NoError(t, err)
	req.Header.Set(fleetlock.ProtocolHeader, "true")
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	raw, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	raw.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, raw.StatusCode)
	assert.Equal(t, `Basic realm="reboot-manager"`, raw.Header.Get("WWW-Authenticate"))
	assertNoLock()

	// Source address: the node now reports another address. Steady-state (harmless)
	// shows when the server's cache has seen it; then pre-reboot is refused, naming the
	// address the server sees.
	zincati := client("zincati:right@")
	setAddresses(t, env, name, "192.0.2.10")
	require.Eventually(t, func() bool { return call(zincati, true, p).StatusCode == http.StatusForbidden }, 10*time.Second, 50*time.Millisecond)
	resp := call(zincati, false, p)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%+v", resp.Reply)
	assert.Equal(t, fleetlock.KindForbidden, resp.Reply.Kind)
	assert.Contains(t, resp.Reply.Value, "request from 127.0.0.1,")
	assertNoLock()

	// Its own address back: granted, with the right credentials only.
	setAddresses(t, env, name, "127.0.0.1")
	require.Eventually(t, func() bool { return call(zincati, true, p).OK() }, 10*time.Second, 50*time.Millisecond)
	resp = call(zincati, false, p)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%+v", resp.Reply)
	assert.Equal(t, fleetlock.KindLockGranted, resp.Reply.Kind)
	n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, string(lock.StateRebooting), n.Annotations[lock.AnnotationStatus])

	// Nobody can release it without credentials.
	resp = call(client(""), true, p)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// The credentials file changes: the old password stops working, the new one works.
	// Polled on another group, so that nothing reaches the lock: the old password is
	// wrong_group (403) until the reload, bad_credentials (401) after.
	write("credentials", []byte("*:zincati:"+bcryptHash(t, "rotated")+":*\n"))
	require.Eventually(t, func() bool {
		return call(zincati, true, fleetlock.ClientParams{ID: id, Group: "infra"}).StatusCode == http.StatusUnauthorized
	}, 10*time.Second, 100*time.Millisecond)
	resp = call(zincati, true, p)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the old password: %+v", resp.Reply)
	resp = call(client("zincati:rotated@"), true, p)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%+v", resp.Reply)
	assert.Equal(t, fleetlock.KindLockReleased, resp.Reply.Kind)

	// The certificate changes on disk: new connections get it, no restart.
	write("tls.crt", cert2)
	write("tls.key", key2)
	require.Eventually(t, func() bool {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}
		r, err := (&http.Client{Transport: tr}).Post("https://"+hostPort+"/v1/steady-state", "", nil)
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.TLS.PeerCertificates[0].Subject.CommonName == "second"
	}, 10*time.Second, 100*time.Millisecond)
	resp = call(client("zincati:rotated@"), true, p)
	assert.Equal(t, fleetlock.KindLockNotHeld, resp.Reply.Kind)

	m := metrics(t, s)
	for reason, atLeast := range map[string]int{"no_credentials": 3, "bad_credentials": 2, "wrong_group": 1, "source_address": 2} {
		got := regexp.MustCompile(`rebootmanager_access_refused_total\{reason="` + reason + `"\} (\d+)`).FindStringSubmatch(m)
		if assert.NotNil(t, got, "no series for %s", reason) {
			n, _ := strconv.Atoi(got[1])
			assert.GreaterOrEqual(t, n, atLeast, reason)
		}
	}
}

// setAddresses replaces the node's status.addresses with InternalIPs.
func setAddresses(t *testing.T, env *controlplane.Env, name string, ips ...string) {
	t.Helper()
	ctx := t.Context()
	n, err := env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	n.Status.Addresses = nil
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	_, err = env.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
}

func bcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	return string(h)
}

func testCert(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := selfsigned.Certificate(cn)
	require.NoError(t, err)
	return certPEM, keyPEM
}

package policy_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
)

// fakePrometheus answers GET /api/v1/alerts with what reply says, after delay, and
// counts the queries under way at once.
type fakePrometheus struct {
	mu       sync.Mutex
	reply    func(*http.Request) (int, string)
	delay    time.Duration
	inFlight atomic.Int32
	maxIn    atomic.Int32
	asked    atomic.Int32
}

func (f *fakePrometheus) set(delay time.Duration, reply func(*http.Request) (int, string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay, f.reply = delay, reply
}

func (f *fakePrometheus) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for m := f.maxIn.Load(); n > m && !f.maxIn.CompareAndSwap(m, n); m = f.maxIn.Load() {
	}
	f.asked.Add(1)
	f.mu.Lock()
	delay, reply := f.delay, f.reply
	f.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-req.Context().Done():
		return
	}
	status, body := reply(req)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprint(w, body)
}

func answer(status int, body string) func(*http.Request) (int, string) {
	return func(*http.Request) (int, string) { return status, body }
}

const noAlerts = `{"status":"success","data":{"alerts":[]}}`

// startPolicy starts a Policy on config (a policy document), without a cluster, and
// returns it with its log.
func startPolicy(t *testing.T, config string, client kubernetes.Interface) (*policy.Policy, *syncBuffer) {
	t.Helper()
	c, err := policy.Parse([]byte(config))
	require.NoError(t, err)
	logs := &syncBuffer{}
	p := policy.New(policy.Options{Config: func() *policy.Config { return c }, Client: client,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	require.NoError(t, p.Start(ctx))
	return p, logs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func admit(p *policy.Policy, node string) error {
	return p.Admit(lock.Candidate{Node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, Group: "default"})
}

// awaitAdmit waits until Admit's answer satisfies ok, and returns it.
func awaitAdmit(t *testing.T, p *policy.Policy, what string, ok func(error) bool) error {
	t.Helper()
	var err error
	require.Eventually(t, func() bool { err = admit(p, "n"); return ok(err) }, 30*time.Second, 50*time.Millisecond,
		"%s; last answer: %v", what, err)
	return err
}

func is(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }

func cause(err error) string {
	var r *lock.Refusal
	if errors.As(err, &r) {
		return r.Cause
	}
	return ""
}

// A Prometheus answer "success" that carries warnings (partial data: a rule source
// down) is no clean answer: it blocks, and says so.
func TestAlertsWarningsBlock(t *testing.T) {
	prom := &fakePrometheus{}
	prom.set(0, answer(200, noAlerts))
	hs := httptest.NewServer(prom)
	t.Cleanup(hs.Close)
	p, _ := startPolicy(t, fmt.Sprintf("blockers: {alerts: {url: %q, interval: 1s}}", hs.URL), nil)
	_ = awaitAdmit(t, p, "admitted on a clean answer", func(err error) bool { return err == nil })

	prom.set(0, answer(200, `{"status":"success","data":{"alerts":[]},"warnings":["rule group \"node\" unavailable: querier down"]}`))
	err := awaitAdmit(t, p, "partial data blocks", is(fleetlock.ErrBlockerCheckFailing))
	assert.False(t, errors.Is(err, fleetlock.ErrAlertFiring), "not an alert")
	assert.Contains(t, err.Error(), "alerts check failing: GET "+hs.URL+"/api/v1/alerts: partial data, Prometheus warns: rule group \"node\" unavailable: querier down")
	b := p.Blockers()
	require.Len(t, b, 1)
	assert.Equal(t, "cannot check: partial data", b[0].State)
	assert.True(t, b[0].Active)

	prom.set(0, answer(200, noAlerts))
	_ = awaitAdmit(t, p, "admitted again on a clean answer", func(err error) bool { return err == nil })
}

// A broken alerts check (503, a timeout) has its own reply kind, reason, cause and
// metrics; a firing alert keeps alert_firing. Each cause has its own Cause key.
func TestAlertsCheckFailingIsNotAnAlert(t *testing.T) {
	prom := &fakePrometheus{}
	prom.set(0, answer(200, noAlerts))
	hs := httptest.NewServer(prom)
	t.Cleanup(hs.Close)
	p, logs := startPolicy(t, fmt.Sprintf("blockers: {alerts: {url: %q, interval: 1s, timeout: 1s}}", hs.URL), nil)
	_ = awaitAdmit(t, p, "admitted on a clean answer", func(err error) bool { return err == nil })
	require.Equal(t, float64(0), metric(t, p, "rebootmanager_blocker_check_failures_total"))
	firstSuccess := metric(t, p, "rebootmanager_blocker_last_success_timestamp_seconds")
	assert.InDelta(t, float64(time.Now().Unix()), firstSuccess, 60)

	prom.set(0, answer(200, `{"status":"success","data":{"alerts":[{"labels":{"alertname":"NodeDown"},"state":"firing"}]}}`))
	firing := awaitAdmit(t, p, "a firing alert", is(fleetlock.ErrAlertFiring))
	assert.Equal(t, "alerts firing: NodeDown", firing.Error())
	assert.Equal(t, "RebootBlockedByAlert: NodeDown", cause(firing))

	prom.set(0, answer(503, `{"status":"error","errorType":"unavailable","error":"too many queries"}`))
	failing := awaitAdmit(t, p, "a 503", is(fleetlock.ErrBlockerCheckFailing))
	assert.False(t, errors.Is(failing, fleetlock.ErrAlertFiring))
	lastSuccess := metric(t, p, "rebootmanager_blocker_last_success_timestamp_seconds")
	assert.Greater(t, lastSuccess, firstSuccess, "the firing alerts were clean answers")
	assert.Equal(t, "alerts check failing: GET "+hs.URL+"/api/v1/alerts: 503 Service Unavailable: too many queries", failing.Error())
	var ref *lock.Refusal
	require.ErrorAs(t, failing, &ref)
	assert.Equal(t, "RebootAlertsCheckFailing", ref.Reason)
	assert.NotEqual(t, cause(firing), cause(failing), "a changed cause has a new key")
	assert.GreaterOrEqual(t, metric(t, p, "rebootmanager_blocker_check_failures_total"), float64(1))
	assert.Equal(t, "cannot check: error", p.Blockers()[0].State)
	assert.Contains(t, logs.String(), "blocker check failing")

	prom.set(3*time.Second, answer(200, noAlerts))
	err := awaitAdmit(t, p, "a timeout", func(err error) bool {
		return errors.Is(err, fleetlock.ErrBlockerCheckFailing) && strings.Contains(err.Error(), "deadline exceeded")
	})
	assert.Equal(t, "cannot check: timeout", p.Blockers()[0].State, err.Error())
	assert.Equal(t, lastSuccess, metric(t, p, "rebootmanager_blocker_last_success_timestamp_seconds"),
		"no clean answer since the 503")
}

// With an interval (1s) shorter than Prometheus' answers (4s), results are stamped
// when they arrive, so the blocker unblocks; never two queries at once.
func TestSlowPrometheusUnblocks(t *testing.T) {
	prom := &fakePrometheus{}
	prom.set(4*time.Second, answer(200, noAlerts))
	hs := httptest.NewServer(prom)
	t.Cleanup(hs.Close)
	p, _ := startPolicy(t, fmt.Sprintf("blockers: {alerts: {url: %q, interval: 1s}}", hs.URL), nil)
	_ = awaitAdmit(t, p, "admitted although each answer takes 4s", func(err error) bool { return err == nil })
	require.Eventually(t, func() bool { return prom.asked.Load() >= 3 }, 30*time.Second, 100*time.Millisecond)
	assert.NoError(t, admit(p, "n"), "still admitted, three slow answers later")
	assert.Equal(t, int32(1), prom.maxIn.Load(), "never two queries at once")
}

// metric returns the value of the policy's one series named name.
func metric(t *testing.T, p *policy.Policy, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(p))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == name {
			require.Len(t, f.GetMetric(), 1, name)
			m := f.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func basic(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// Credentials come from files (bearer token, basic-auth password, CA) and headers
// from the policy; they reach Prometheus and are never shown: not in replies, status
// or logs.
func TestAlertsCredentialsFromFiles(t *testing.T) {
	const token, password = "s3cret-token", "hunter2"
	var mu sync.Mutex
	wantAuth := "Bearer " + token
	prom := &fakePrometheus{}
	prom.set(0, func(req *http.Request) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if req.Header.Get("Authorization") != wantAuth || req.Header.Get("X-Scope-OrgID") != "team-a" {
			return 401, `{"status":"error","error":"unauthorized"}`
		}
		return 200, noAlerts
	})
	hs := httptest.NewTLSServer(prom)
	t.Cleanup(hs.Close)
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}
	ca := write("ca.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw})))
	tokenFile := write("token", token+"\n")
	secretURL := hs.URL + "/?access_token=" + token

	p, logs := startPolicy(t, fmt.Sprintf(`
blockers:
  alerts:
    url: %q
    interval: 1s
    bearerTokenFile: %s
    tls: {caFile: %s}
    headers: {X-Scope-OrgID: team-a}
`, secretURL, tokenFile, ca), nil)
	_ = awaitAdmit(t, p, "admitted: token, CA and header reach Prometheus", func(err error) bool { return err == nil })

	write("token", "rotated")
	err := awaitAdmit(t, p, "a rotated token file is read again", is(fleetlock.ErrBlockerCheckFailing))
	assert.Equal(t, "alerts check failing: GET "+hs.URL+"/api/v1/alerts: 401 Unauthorized: unauthorized", err.Error())
	mu.Lock()
	wantAuth = "Bearer rotated"
	mu.Unlock()
	_ = awaitAdmit(t, p, "the rotated token works", func(err error) bool { return err == nil })

	// Basic auth: a user name and a password file.
	passwordFile := write("password", password)
	mu.Lock()
	wantAuth = "Basic " + basic("reboot-manager", password)
	mu.Unlock()
	p2, logs2 := startPolicy(t, fmt.Sprintf(`
blockers:
  alerts:
    url: %q
    interval: 1s
    basicAuth: {username: reboot-manager, passwordFile: %s}
    tls: {caFile: %s}
    headers: {X-Scope-OrgID: team-a}
`, hs.URL, passwordFile, ca), nil)
	_ = awaitAdmit(t, p2, "admitted with basic auth", func(err error) bool { return err == nil })
	write("password", "wrong")
	err2 := awaitAdmit(t, p2, "a wrong password blocks", is(fleetlock.ErrBlockerCheckFailing))

	hs.Close() // unreachable: the transport error names the URL, redacted
	err3 := awaitAdmit(t, p, "unreachable", func(err error) bool {
		return errors.Is(err, fleetlock.ErrBlockerCheckFailing) && !strings.Contains(err.Error(), "401")
	})
	for _, shown := range []string{err.Error(), err2.Error(), err3.Error(), fmt.Sprint(p.Blockers()), fmt.Sprint(p2.Blockers()),
		logs.String(), logs2.String()} {
		assert.NotContains(t, shown, token)
		assert.NotContains(t, shown, password)
		assert.NotContains(t, shown, "access_token")
	}
}

// slowPods delays every pod LIST by delay and counts the lists under way at once.
type slowPods struct {
	rt       http.RoundTripper
	delay    time.Duration
	inFlight atomic.Int32
	maxIn    atomic.Int32
	lists    atomic.Int32
}

func (s *slowPods) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/pods") {
		n := s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		for m := s.maxIn.Load(); n > m && !s.maxIn.CompareAndSwap(m, n); m = s.maxIn.Load() {
		}
		s.lists.Add(1)
		time.Sleep(s.delay)
	}
	return s.rt.RoundTrip(req)
}

// With podsInterval (1s) shorter than the pod lists (4s), results are stamped when
// they arrive, so the blocker unblocks; never two lists at once.
func TestSlowPodsCheckUnblocks(t *testing.T) {
	env := controlplane.Shared(t)
	cfg := rest.CopyConfig(env.Config)
	slow := &slowPods{delay: 4 * time.Second}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { slow.rt = rt; return slow })
	client := kubernetes.NewForConfigOrDie(cfg)
	p, _ := startPolicy(t, fmt.Sprintf("blockers: {podsInterval: 1s, pods: [{selector: app=backup, namespace: %s}]}", env.Namespace(t)), client)
	_ = awaitAdmit(t, p, "admitted although each list takes 4s", func(err error) bool { return err == nil })
	require.Eventually(t, func() bool { return slow.lists.Load() >= 3 }, 30*time.Second, 100*time.Millisecond)
	assert.NoError(t, admit(p, "n"), "still admitted, three slow lists later")
	assert.Equal(t, int32(1), slow.maxIn.Load(), "never two lists at once")
}

// A client that may not list pods cannot check the pods blocker: it blocks, as
// "cannot check: forbidden", never as pods found.
func TestPodsCheckForbidden(t *testing.T) {
	env := controlplane.Shared(t)
	ns := env.Namespace(t)
	ctx := t.Context()
	_, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	client, _ := env.ServiceAccountClient(t, ns, "viewer")
	c, err := policy.Parse([]byte("blockers: {pods: [{selector: app=backup}]}"))
	require.NoError(t, err)
	// As the status command does: no Start (no pause ConfigMap watch), one check.
	p := policy.New(policy.Options{Config: func() *policy.Config { return c }, Client: client})
	p.CheckBlockers(ctx)
	err = admit(p, "n")
	require.ErrorIs(t, err, fleetlock.ErrBlockerCheckFailing)
	assert.False(t, errors.Is(err, fleetlock.ErrPodsBlocking))
	assert.Contains(t, err.Error(), "pods check failing: list pods app=backup: pods is forbidden")
	b := p.Blockers()
	require.Len(t, b, 1)
	assert.Equal(t, "cannot check: forbidden", b[0].State)
	assert.True(t, b[0].Active, "a server that cannot check blocks")
}

// A redirect is not followed: the credentials, added to every request, would reach
// the redirect's target. It is an answer that is not clean, and blocks.
func TestAlertsRedirectNotFollowed(t *testing.T) {
	var leaked atomic.Value
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		leaked.Store(req.Header.Get("Authorization"))
		fmt.Fprint(w, noAlerts)
	}))
	t.Cleanup(elsewhere.Close)
	prom := httptest.NewServer(http.RedirectHandler(elsewhere.URL+"/api/v1/alerts", http.StatusFound))
	t.Cleanup(prom.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("s3cret-token"), 0o600))
	p, _ := startPolicy(t, fmt.Sprintf("blockers: {alerts: {url: %q, interval: 1s, bearerTokenFile: %s}}", prom.URL, tokenFile), nil)
	err := awaitAdmit(t, p, "a redirect blocks", func(err error) bool {
		return errors.Is(err, fleetlock.ErrBlockerCheckFailing) && !strings.Contains(err.Error(), "not checked yet")
	})
	assert.Contains(t, err.Error(), "302 Found")
	assert.Nil(t, leaked.Load(), "the redirect's target was never asked")
}

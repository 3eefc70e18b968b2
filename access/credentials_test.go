package access

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// hashes caches test hashes: bcrypt at MinCost still takes a millisecond or two.
var hashes sync.Map

// hash returns a bcrypt hash of password at the lowest cost.
func hash(t testing.TB, password string) string {
	t.Helper()
	if h, ok := hashes.Load(password); ok {
		return h.(string)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	hashes.Store(password, string(h))
	return string(h)
}

func TestParseCredentials(t *testing.T) {
	file := strings.Join([]string{
		"# reboot-manager credentials",
		"",
		"  workers:alice:" + hash(t, "a") + ":node-role.kubernetes.io/worker  ",
		"infra.eu-1:alice:" + hash(t, "a") + ":pool in (infra, edge),zone=eu-1",
		"\t# indented comment",
		"*:admin:" + hash(t, "root") + ":*\r",
		"*:bob:$2y$04$" + hash(t, "b")[7:] + ": !gpu ", // htpasswd -B writes $2y$
	}, "\n")
	c, err := ParseCredentials([]byte(file))
	require.NoError(t, err)
	var got []string
	for _, e := range c.Entries() {
		got = append(got, e.Group+"/"+e.User+"/"+e.Nodes+"@"+string(rune('0'+e.Line)))
	}
	assert.Equal(t, []string{
		"workers/alice/node-role.kubernetes.io/worker@3", "infra.eu-1/alice/pool in (infra, edge),zone=eu-1@4",
		"*/admin/*@6", "*/bob/!gpu@7",
	}, got)
	worker := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"node-role.kubernetes.io/worker": ""}}}
	edge := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pool": "edge", "zone": "eu-1"}}}
	for _, tt := range []struct {
		entry           int
		group           string
		node            *corev1.Node
		groupOK, nodeOK bool
	}{
		{0, "workers", worker, true, true},
		{0, "workers", edge, true, false},
		{0, "workers", nil, true, false},
		{1, "workers", edge, false, true},
		{1, "infra.eu-1", edge, true, true},
		{2, "x", nil, true, true},
		{3, "x", worker, true, true},
	} {
		e := c.entries[tt.entry]
		groupOK, nodeOK := e.matches(tt.group, tt.node)
		assert.Equal(t, [2]bool{tt.groupOK, tt.nodeOK}, [2]bool{groupOK, nodeOK}, "%+v", tt)
	}
}

func TestParseCredentialsErrors(t *testing.T) {
	good := "*:ok:" + hash(t, "x") + ":*"
	for _, tt := range []struct {
		name, line string
		want       string
	}{
		{"two fields", "alice:secret", "want GROUP:USER:BCRYPT_HASH:NODE_SELECTOR, got 2 field(s)"},
		{"htpasswd line", "alice:" + hash(t, "x"), "an htpasswd line? put a group or * in front and a node selector or * after"},
		{"no node selector (the old form)", "workers:alice:" + hash(t, "x"), "got GROUP:USER:BCRYPT_HASH: add the nodes the user may act for"},
		{"five fields", "a:b:c:d:e", "got 5 field(s)"},
		{"bad group", "work_ers:alice:" + hash(t, "x") + ":*", `group "work_ers"`},
		{"empty group", ":alice:" + hash(t, "x") + ":*", `group ""`},
		{"empty user", "workers::" + hash(t, "x") + ":*", "empty user name"},
		{"user with space", "workers: alice:" + hash(t, "x") + ":*", `user " alice"`},
		{"plain password", "workers:alice:secret:*", `user "alice": the password hash is not a bcrypt hash`},
		{"md5 hash", "workers:alice:$apr1$abc$defdefdefdefdefdefdefd:*", "not a bcrypt hash"},
		{"truncated hash", "workers:alice:" + hash(t, "x")[:50] + ":*", "not a bcrypt hash"},
		{"empty node selector", "workers:alice:" + hash(t, "x") + ": ", `user "alice": empty node selector`},
		{"bad node selector", "workers:alice:" + hash(t, "x") + ":role in (a", `node selector "role in (a"`},
		{"duplicate", "*:ok:" + hash(t, "x") + ":*", `user "ok" appears twice for group "*" and nodes "*" (first on line 2)`},
		{"another password", "workers:ok:" + hash(t, "y") + ":role=w", `user "ok" has another password hash on line 2: one password per user`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCredentials([]byte("# header\n" + good + "\n\n" + tt.line + "\n" + good))
			var le *LineError
			require.ErrorAs(t, err, &le)
			assert.Equal(t, 4, le.Line, "the line number counts comments and blank lines")
			assert.True(t, strings.HasPrefix(err.Error(), "line 4: "), err.Error())
			assert.Contains(t, err.Error(), tt.want)
			if i := strings.Index(tt.line, "$2a$"); i >= 0 {
				h := tt.line[i:]
				h = h[:min(len(h), 60)]
				assert.NotContains(t, err.Error(), h, "the hash is not repeated")
			}
		})
	}
	for _, empty := range []string{"", "\n\n", "# only a comment\n"} {
		_, err := ParseCredentials([]byte(empty))
		assert.ErrorIs(t, err, errNoEntries, "%q", empty)
	}
}

// TestVerifierCacheKey: the cache holds neither the password nor a plain hash of it,
// and a cached success is for that user, password and hash only.
func TestVerifierCacheKey(t *testing.T) {
	v := newVerifier(time.Minute, time.Now, DefaultMaxQueuedChecks)
	h := []byte(hash(t, "pw"))
	ok, err := v.verify(t.Context(), "alice", "pw", h)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, v.ok, 1)
	for k := range v.ok {
		assert.NotContains(t, string(k[:]), "pw")
		assert.Equal(t, v.cacheKey("alice", "pw", h), k)
	}
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), v.cacheKey("alice", "pw2", h))
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), v.cacheKey("alic", "epw", h), "fields are length-prefixed")
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), newVerifier(time.Minute, time.Now, DefaultMaxQueuedChecks).cacheKey("alice", "pw", h), "a key per process")

	ok, err = v.verify(t.Context(), "alice", "wrong", h)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Len(t, v.ok, 1, "failures are not cached")
}

// TestVerifierBoundsConcurrency: a comparison waits for a free slot, and gives up
// when its request ends.
func TestVerifierBoundsConcurrency(t *testing.T) {
	v := newVerifier(time.Minute, time.Now, DefaultMaxQueuedChecks)
	for range cap(v.sem) {
		v.sem <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := v.verify(ctx, "alice", "pw", []byte(hash(t, "pw")))
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	<-v.sem
	ok, err := v.verify(t.Context(), "alice", "pw", []byte(hash(t, "pw")))
	require.NoError(t, err)
	assert.True(t, ok)
}

// hashT is hash without a testing.TB, for lines built outside a test's helpers.
func hashT(password string) string {
	if h, ok := hashes.Load(password); ok {
		return h.(string)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	hashes.Store(password, string(h))
	return string(h)
}

// TestVerifierJoinsComparisonUnderWay: a fleet sharing one credential that starts
// at once costs one comparison, and the requests that wait for it take no place in
// the queue; if the request that compares ends, a waiting one compares instead.
func TestVerifierJoinsComparisonUnderWay(t *testing.T) {
	v := newVerifier(time.Minute, time.Now, 0) // no check may wait
	gate := make(chan struct{})
	var n atomic.Int32
	v.compare = func(hash, password []byte) error {
		n.Add(1)
		<-gate
		return bcrypt.CompareHashAndPassword(hash, password)
	}
	h := []byte(hash(t, "pw"))
	leaderCtx, cancelLeader := context.WithCancel(t.Context())
	leader := make(chan error, 1)
	go func() {
		_, err := v.verify(leaderCtx, "fleet", "pw", h)
		leader <- err
	}()
	require.Eventually(t, func() bool { return n.Load() == 1 }, 5*time.Second, time.Millisecond)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			ok, err := v.verify(t.Context(), "fleet", "pw", h)
			assert.NoError(t, err)
			assert.True(t, ok)
		})
	}
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, 1, len(v.queue), "the waiting requests take no place in the queue")
	_, err := v.verify(t.Context(), "other", "pw", h)
	assert.ErrorIs(t, err, fleetlock.ErrTooManyRequests, "the queue is full for other checks")

	cancelLeader() // the comparing request ends; bcrypt itself cannot be stopped
	close(gate)
	assert.NoError(t, <-leader, "the leader's comparison completes")
	wg.Wait()
	assert.LessOrEqual(t, n.Load(), int32(2), "one comparison, or two if the leader's ended before it started")
}

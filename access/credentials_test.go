package access

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
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
		"  workers:alice:" + hash(t, "a") + "  ",
		"infra.eu-1:alice:" + hash(t, "a2"),
		"\t# indented comment",
		"*:admin:" + hash(t, "root") + "\r",
		"*:bob:$2y$04$" + hash(t, "b")[7:], // htpasswd -B writes $2y$
	}, "\n")
	c, err := ParseCredentials([]byte(file))
	require.NoError(t, err)
	var got []string
	for _, e := range c.Entries() {
		got = append(got, e.Group+"/"+e.User+"@"+string(rune('0'+e.Line)))
	}
	assert.Equal(t, []string{"workers/alice@3", "infra.eu-1/alice@4", "*/admin@6", "*/bob@7"}, got)
}

func TestParseCredentialsErrors(t *testing.T) {
	good := "*:ok:" + hash(t, "x")
	for _, tt := range []struct {
		name, line string
		want       string
	}{
		{"two fields", "alice:secret", "want GROUP:USER:BCRYPT_HASH, got 2 field(s)"},
		{"htpasswd line", "alice:" + hash(t, "x"), "an htpasswd line? put a group or * in front: *:alice:..."},
		{"four fields", "a:b:c:d", "got 4 field(s)"},
		{"bad group", "work_ers:alice:" + hash(t, "x"), `group "work_ers"`},
		{"empty group", ":alice:" + hash(t, "x"), `group ""`},
		{"empty user", "workers::" + hash(t, "x"), "empty user name"},
		{"user with space", "workers: alice:" + hash(t, "x"), `user " alice"`},
		{"plain password", "workers:alice:secret", `user "alice": the password hash is not a bcrypt hash`},
		{"md5 hash", "workers:alice:$apr1$abc$defdefdefdefdefdefdefd", "not a bcrypt hash"},
		{"truncated hash", "workers:alice:" + hash(t, "x")[:50], "not a bcrypt hash"},
		{"duplicate", "*:ok:" + hash(t, "y"), `user "ok" appears twice for group "*" (first on line 2)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCredentials([]byte("# header\n" + good + "\n\n" + tt.line + "\n" + good))
			var le *LineError
			require.ErrorAs(t, err, &le)
			assert.Equal(t, 4, le.Line, "the line number counts comments and blank lines")
			assert.True(t, strings.HasPrefix(err.Error(), "line 4: "), err.Error())
			assert.Contains(t, err.Error(), tt.want)
			if i := strings.Index(tt.line, "$2a$"); i >= 0 {
				assert.NotContains(t, err.Error(), tt.line[i:], "the hash is not repeated")
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
	v := newVerifier(time.Minute, time.Now)
	h := []byte(hash(t, "pw"))
	ok, err := v.verify(context.Background(), "alice", "pw", h)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, v.ok, 1)
	for k := range v.ok {
		assert.NotContains(t, string(k[:]), "pw")
		assert.Equal(t, v.cacheKey("alice", "pw", h), k)
	}
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), v.cacheKey("alice", "pw2", h))
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), v.cacheKey("alic", "epw", h), "fields are length-prefixed")
	assert.NotEqual(t, v.cacheKey("alice", "pw", h), newVerifier(time.Minute, time.Now).cacheKey("alice", "pw", h), "a key per process")

	ok, err = v.verify(context.Background(), "alice", "wrong", h)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Len(t, v.ok, 1, "failures are not cached")
}

// TestVerifierBoundsConcurrency: a comparison waits for a free slot, and gives up
// when its request ends.
func TestVerifierBoundsConcurrency(t *testing.T) {
	v := newVerifier(time.Minute, time.Now)
	for range cap(v.sem) {
		v.sem <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := v.verify(ctx, "alice", "pw", []byte(hash(t, "pw")))
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	<-v.sem
	ok, err := v.verify(context.Background(), "alice", "pw", []byte(hash(t, "pw")))
	require.NoError(t, err)
	assert.True(t, ok)
}

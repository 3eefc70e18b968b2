package access

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// AnyGroup in the GROUP field of a credentials line means every group.
const AnyGroup = "*"

// Entry is one line of a credentials file.
type Entry struct {
	// Group is the FleetLock group the user may act for, or AnyGroup.
	Group string
	// User is the HTTP Basic user name.
	User string
	// Hash is the bcrypt hash of the password.
	Hash []byte
	// Line is the line number in the file, from 1.
	Line int
}

// Credentials is a parsed credentials file. It is immutable.
type Credentials struct {
	entries []Entry
	byUser  map[string][]int // indexes into entries
}

// CredentialSource gives the credentials in force. *CredentialsFile is one.
type CredentialSource interface {
	Credentials() *Credentials
}

// LineError is a credentials file line that is not valid.
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// errNoEntries is a credentials file without a single entry: nobody could ever pass.
var errNoEntries = errors.New("no GROUP:USER:BCRYPT_HASH line: nobody could authenticate")

// ParseCredentials parses a credentials file: one GROUP:USER:BCRYPT_HASH per line,
// GROUP being a FleetLock group or * for any group, USER a user name without ":" and
// without white space at either end, BCRYPT_HASH a bcrypt hash ($2a$, $2b$ or $2y$,
// as htpasswd -B writes). White space around a line is ignored; so are blank lines
// and lines starting with #. A (group, user) pair appears at most once. The first
// invalid line is returned as a *LineError; a file without entries is an error too.
func ParseCredentials(data []byte) (*Credentials, error) {
	c := &Credentials{byUser: map[string][]int{}}
	first := map[[2]string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, maxFileBytes)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, msg := parseEntry(line)
		if msg != "" {
			return nil, &LineError{Line: n, Msg: msg}
		}
		e.Line = n
		key := [2]string{e.Group, e.User}
		if prev, dup := first[key]; dup {
			return nil, &LineError{Line: n, Msg: fmt.Sprintf("user %q appears twice for group %q (first on line %d)", e.User, e.Group, prev)}
		}
		first[key] = n
		c.byUser[e.User] = append(c.byUser[e.User], len(c.entries))
		c.entries = append(c.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.entries) == 0 {
		return nil, errNoEntries
	}
	return c, nil
}

// parseEntry parses one line that is neither blank nor a comment; msg says what is
// wrong with it, without repeating the hash.
func parseEntry(line string) (e Entry, msg string) {
	fields := strings.Split(line, ":")
	if len(fields) == 2 && strings.HasPrefix(fields[1], "$2") {
		return e, "want GROUP:USER:BCRYPT_HASH, got USER:HASH (an htpasswd line? put a group or * in front: *:" + fields[0] + ":...)"
	}
	if len(fields) != 3 {
		return e, fmt.Sprintf("want GROUP:USER:BCRYPT_HASH, got %d field(s) separated by ':'", len(fields))
	}
	e.Group, e.User, e.Hash = fields[0], fields[1], []byte(fields[2])
	switch {
	case e.Group != AnyGroup && !fleetlock.ValidGroup(e.Group):
		return e, fmt.Sprintf("group %q: want * or a FleetLock group (at most %d of a-z A-Z 0-9 . -)", e.Group, fleetlock.MaxGroupBytes)
	case e.User == "":
		return e, "empty user name"
	case strings.TrimSpace(e.User) != e.User || strings.IndexFunc(e.User, unicode.IsControl) >= 0:
		return e, fmt.Sprintf("user %q: no white space at either end, no control characters", e.User)
	}
	if _, err := bcrypt.Cost(e.Hash); err != nil || len(e.Hash) != 60 {
		return e, fmt.Sprintf("user %q: the password hash is not a bcrypt hash ($2y$10$ and 53 more characters, as htpasswd -nbB writes)", e.User)
	}
	return e, ""
}

// Entries returns the entries, in file order.
func (c *Credentials) Entries() []Entry { return append([]Entry(nil), c.entries...) }

// Outcome of an authentication.
type authResult int

const (
	authOK         authResult = iota
	authBad                   // unknown user or wrong password
	authWrongGroup            // right password, for other groups only
)

// authenticate checks user and password for group: the entries of the user for the
// group or for AnyGroup first, then the others (to tell a wrong group from a wrong
// password). An error is the context's, while waiting to compare.
func (c *Credentials) authenticate(ctx context.Context, v *verifier, user, password, group string) (authResult, error) {
	idx := c.byUser[user]
	if len(idx) == 0 {
		// The same work as for a known user, so that timing does not tell users apart.
		if err := v.waste(ctx, c.entries[0].Hash, password); err != nil {
			return authBad, err
		}
		return authBad, nil
	}
	for _, forGroup := range []bool{true, false} {
		for _, i := range idx {
			e := &c.entries[i]
			if (e.Group == group || e.Group == AnyGroup) != forGroup {
				continue
			}
			ok, err := v.verify(ctx, user, password, e.Hash)
			if err != nil {
				return authBad, err
			}
			if ok && forGroup {
				return authOK, nil
			}
			if ok {
				return authWrongGroup, nil
			}
		}
	}
	return authBad, nil
}

// maxCached bounds the verifier's cache. Only successful checks are cached, so only
// someone holding valid credentials can add to it.
const maxCached = 4096

// verifier compares passwords with bcrypt hashes, at most a few at a time, and
// remembers successes for a while.
type verifier struct {
	key [32]byte // HMAC key of the cache, drawn at start
	ttl time.Duration
	now func() time.Time
	sem chan struct{} // bounds concurrent bcrypt comparisons

	mu sync.Mutex
	ok map[[32]byte]time.Time // HMAC(user, password, hash) -> expiry
}

func newVerifier(ttl time.Duration, now func() time.Time) *verifier {
	v := &verifier{ttl: ttl, now: now, ok: map[[32]byte]time.Time{},
		sem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))}
	_, _ = rand.Read(v.key[:])
	return v
}

// cacheKey is HMAC-SHA256 of the user, password and hash, each length-prefixed.
func (v *verifier) cacheKey(user, password string, hash []byte) [32]byte {
	m := hmac.New(sha256.New, v.key[:])
	for _, b := range [][]byte{[]byte(user), []byte(password), hash} {
		_ = binary.Write(m, binary.BigEndian, int64(len(b)))
		m.Write(b)
	}
	var k [32]byte
	m.Sum(k[:0])
	return k
}

// verify reports whether password matches hash, from the cache or with bcrypt.
func (v *verifier) verify(ctx context.Context, user, password string, hash []byte) (bool, error) {
	key := v.cacheKey(user, password, hash)
	now := v.now()
	v.mu.Lock()
	exp, hit := v.ok[key]
	v.mu.Unlock()
	if hit && now.Before(exp) {
		return true, nil
	}
	ok, err := v.compare(ctx, hash, password)
	if err != nil || !ok {
		return false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.ok) >= maxCached {
		for k, exp := range v.ok {
			if !now.Before(exp) {
				delete(v.ok, k)
			}
		}
		if len(v.ok) >= maxCached {
			clear(v.ok)
		}
	}
	v.ok[key] = now.Add(v.ttl)
	return true, nil
}

// waste does a bcrypt comparison whose result does not matter.
func (v *verifier) waste(ctx context.Context, hash []byte, password string) error {
	_, err := v.compare(ctx, hash, password)
	return err
}

// compare runs bcrypt once a comparison slot is free.
func (v *verifier) compare(ctx context.Context, hash []byte, password string) (bool, error) {
	select {
	case v.sem <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("waiting to check a password: %w", ctx.Err())
	}
	defer func() { <-v.sem }()
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil, nil
}

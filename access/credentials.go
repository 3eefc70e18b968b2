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
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// AnyGroup in the GROUP field of a credentials line means every group.
const AnyGroup = "*"

// AnyNode in the NODE_SELECTOR field of a credentials line means every node.
const AnyNode = "*"

// MaxPasswordBytes is the longest password bcrypt reads: it ignores what follows, so a
// longer password would pass with any other that shares its first 72 bytes. Such
// passwords are refused.
const MaxPasswordBytes = 72

// Entry is one line of a credentials file.
type Entry struct {
	// Group is the FleetLock group the user may ask in, or AnyGroup.
	Group string
	// User is the HTTP Basic user name.
	User string
	// Hash is the bcrypt hash of the password.
	Hash []byte
	// Nodes is the NODE_SELECTOR field: a Kubernetes label selector the node a
	// request's ID resolves to must match, or AnyNode.
	Nodes string
	// Line is the line number in the file, from 1.
	Line int

	selector labels.Selector // nil for AnyNode
}

// matches reports whether the entry is for group and for node (nil: the node is
// unknown, so only an AnyNode entry matches).
func (e *Entry) matches(group string, node *corev1.Node) (groupOK, nodeOK bool) {
	groupOK = e.Group == AnyGroup || e.Group == group
	nodeOK = e.selector == nil || node != nil && e.selector.Matches(labels.Set(node.Labels))
	return groupOK, nodeOK
}

// Credentials is a parsed credentials file. It is immutable.
type Credentials struct {
	entries []Entry
	byUser  map[string][]int // indexes into entries
	// dummy is the hash an unknown user's password is compared with, so that an
	// unknown user costs what a known one does: a hash of the file at its most
	// common cost.
	dummy []byte
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
var errNoEntries = errors.New("no GROUP:USER:BCRYPT_HASH:NODE_SELECTOR line: nobody could authenticate")

// ParseCredentials parses a credentials file: one GROUP:USER:BCRYPT_HASH:NODE_SELECTOR
// per line.
//
//   - GROUP is the FleetLock group the user may ask in, or * for any group.
//   - USER is a user name without ":" and without white space at either end.
//   - BCRYPT_HASH is a bcrypt hash ($2a$, $2b$ or $2y$, as htpasswd -B writes). A user
//     has one password: every line of a user carries the same hash, so that checking
//     a password costs one bcrypt comparison whoever the user is.
//   - NODE_SELECTOR is a Kubernetes label selector (node-role.kubernetes.io/worker,
//     pool in (a,b),zone=eu-1a) that the Node the request's ID belongs to must match,
//     or * for every node. It is required: credentials bound to the group a client
//     writes in its request would let it act for any node.
//
// A user may have several lines; a request passes if one of them is for its group and
// its node. White space around a line is ignored; so are blank lines and lines
// starting with #. The same (group, user, selector) appears at most once. The first
// invalid line is returned as a *LineError; a file without entries is an error too.
func ParseCredentials(data []byte) (*Credentials, error) {
	c := &Credentials{byUser: map[string][]int{}}
	first := map[[3]string]int{}
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
		key := [3]string{e.Group, e.User, e.Nodes}
		if prev, dup := first[key]; dup {
			return nil, &LineError{Line: n, Msg: fmt.Sprintf("user %q appears twice for group %q and nodes %q (first on line %d)", e.User, e.Group, e.Nodes, prev)}
		}
		first[key] = n
		if idx := c.byUser[e.User]; len(idx) > 0 && !bytes.Equal(c.entries[idx[0]].Hash, e.Hash) {
			return nil, &LineError{Line: n, Msg: fmt.Sprintf("user %q has another password hash on line %d: one password per user (copy that line's hash)", e.User, c.entries[idx[0]].Line)}
		}
		c.byUser[e.User] = append(c.byUser[e.User], len(c.entries))
		c.entries = append(c.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.entries) == 0 {
		return nil, errNoEntries
	}
	c.dummy = commonCostHash(c.entries)
	return c, nil
}

// commonCostHash returns the first hash of the most common cost among entries.
func commonCostHash(entries []Entry) []byte {
	count := map[int]int{}
	best, hash := 0, entries[0].Hash
	for _, e := range entries {
		cost, _ := bcrypt.Cost(e.Hash) // checked by parseEntry
		if count[cost]++; count[cost] > best {
			best, hash = count[cost], e.Hash
		}
	}
	return hash
}

const lineForm = "GROUP:USER:BCRYPT_HASH:NODE_SELECTOR"

// parseEntry parses one line that is neither blank nor a comment; msg says what is
// wrong with it, without repeating the hash.
func parseEntry(line string) (e Entry, msg string) {
	fields := strings.Split(line, ":")
	switch {
	case len(fields) == 2 && strings.HasPrefix(fields[1], "$2"):
		return e, "want " + lineForm + ", got USER:HASH (an htpasswd line? put a group or * in front and a node selector or * after: *:" + fields[0] + ":...:node-role.kubernetes.io/worker)"
	case len(fields) == 3 && strings.HasPrefix(fields[2], "$2"):
		return e, "want " + lineForm + ", got GROUP:USER:BCRYPT_HASH: add the nodes the user may act for (a label selector such as node-role.kubernetes.io/worker, or * for every node); the group in a request is what the client writes, so it binds nothing"
	case len(fields) != 4:
		return e, fmt.Sprintf("want %s, got %d field(s) separated by ':'", lineForm, len(fields))
	}
	e.Group, e.User, e.Hash, e.Nodes = fields[0], fields[1], []byte(fields[2]), strings.TrimSpace(fields[3])
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
	switch e.Nodes {
	case "":
		return e, fmt.Sprintf("user %q: empty node selector: want a label selector, or * for every node", e.User)
	case AnyNode:
	default:
		sel, err := labels.Parse(e.Nodes)
		if err != nil || sel.Empty() {
			return e, fmt.Sprintf("user %q: node selector %q: want a label selector (role=worker, node-role.kubernetes.io/worker, pool in (a,b)) or *: %v", e.User, e.Nodes, err)
		}
		e.selector = sel
	}
	return e, ""
}

// Entries returns the entries, in file order.
func (c *Credentials) Entries() []Entry { return append([]Entry(nil), c.entries...) }

// authenticate checks user and password with exactly one password check, whoever
// the user: a known user's hash, or for an unknown one c.dummy (its result ignored).
// It returns the user's entries, or none for an unknown user or a wrong or too long
// password. An error is the verifier's: the request ended while waiting, or the
// queue of checks is full.
func (c *Credentials) authenticate(ctx context.Context, v *verifier, user, password string) ([]Entry, error) {
	if len(password) > MaxPasswordBytes {
		return nil, nil // nothing to compare: bcrypt would read only a prefix
	}
	idx := c.byUser[user]
	if len(idx) == 0 {
		// The same work as for a known user, so that timing does not tell users apart.
		return nil, v.waste(ctx, c.dummy, password)
	}
	ok, err := v.verify(ctx, user, password, c.entries[idx[0]].Hash)
	if err != nil || !ok {
		return nil, err
	}
	out := make([]Entry, len(idx))
	for i, j := range idx {
		out[i] = c.entries[j]
	}
	return out, nil
}

// maxCached bounds the verifier's cache. Only successful checks are cached, so only
// someone holding valid credentials can add to it.
const maxCached = 4096

// verifier compares passwords with bcrypt hashes, at most a few at a time with a
// bounded queue, and remembers successes for a while.
type verifier struct {
	key [32]byte // HMAC key of the cache, drawn at start
	ttl time.Duration
	now func() time.Time
	// compare is bcrypt.CompareHashAndPassword; tests count the comparisons.
	compare func(hash, password []byte) error
	// sem bounds concurrent comparisons; queue bounds the comparisons running and
	// waiting: past it, a check is refused at once.
	sem, queue chan struct{}

	mu       sync.Mutex
	ok       map[[32]byte]time.Time // HMAC(user, password, hash) -> expiry
	inflight map[[32]byte]*flight   // comparisons under way, by the same key
}

// DefaultMaxQueuedChecks is how many password checks may wait for a free CPU: with
// bcrypt at cost 10 (about 60 ms), a check waits at most about half a second.
const DefaultMaxQueuedChecks = 8

func newVerifier(ttl time.Duration, now func() time.Time, queued int) *verifier {
	running := max(1, runtime.GOMAXPROCS(0)/2)
	v := &verifier{ttl: ttl, now: now, ok: map[[32]byte]time.Time{}, inflight: map[[32]byte]*flight{},
		compare: bcrypt.CompareHashAndPassword,
		sem:     make(chan struct{}, running), queue: make(chan struct{}, running+queued)}
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

// verify reports whether password matches hash: from the cache, without waiting;
// from a comparison of the same user, password and hash already under way (a fleet
// sharing one credential starts together), waiting for it without taking a place in
// the queue; else with bcrypt.
func (v *verifier) verify(ctx context.Context, user, password string, hash []byte) (bool, error) {
	key := v.cacheKey(user, password, hash)
	for {
		now := v.now()
		v.mu.Lock()
		if exp, hit := v.ok[key]; hit && now.Before(exp) {
			v.mu.Unlock()
			return true, nil
		}
		f := v.inflight[key]
		if f == nil {
			f = &flight{done: make(chan struct{})}
			v.inflight[key] = f
			v.mu.Unlock()
			f.ok, f.err = v.bcrypt(ctx, hash, password)
			v.mu.Lock()
			delete(v.inflight, key)
			if f.ok {
				v.remember(key, now)
			}
			v.mu.Unlock()
			close(f.done)
			return f.ok, f.err
		}
		v.mu.Unlock()
		select {
		case <-f.done:
			if !errors.Is(f.err, context.Canceled) && !errors.Is(f.err, context.DeadlineExceeded) {
				return f.ok, f.err
			}
			// The request that compared ended while waiting: compare for ourselves.
		case <-ctx.Done():
			return false, fmt.Errorf("waiting to check a password: %w", ctx.Err())
		}
	}
}

// flight is a comparison under way; ok and err are set when done is closed.
type flight struct {
	done chan struct{}
	ok   bool
	err  error
}

// remember caches a success at key until now+ttl, making room if the cache is full.
// v.mu is held.
func (v *verifier) remember(key [32]byte, now time.Time) {
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
}

// waste does a bcrypt comparison whose result does not matter.
func (v *verifier) waste(ctx context.Context, hash []byte, password string) error {
	_, err := v.bcrypt(ctx, hash, password)
	return err
}

// bcrypt runs one comparison once a slot is free. It fails at once, with an error
// matching fleetlock.ErrTooManyRequests, when the queue is full, and with the
// context's error when the request ends while waiting.
func (v *verifier) bcrypt(ctx context.Context, hash []byte, password string) (bool, error) {
	select {
	case v.queue <- struct{}{}:
	default:
		return false, fmt.Errorf("%w: %d password checks running or waiting; ask again later", fleetlock.ErrTooManyRequests, cap(v.queue))
	}
	defer func() { <-v.queue }()
	select {
	case v.sem <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("waiting to check a password: %w", ctx.Err())
	}
	defer func() { <-v.sem }()
	return v.compare(hash, []byte(password)) == nil, nil
}

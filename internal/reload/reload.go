// Package reload keeps a value parsed from files up to date with them: the files are
// checked at most once per interval, when the value is asked for, and parsed again only
// when their contents changed. An unreadable or invalid new version is logged once and
// the value in force is kept; State says which version is in force and why the files
// as they are now are not.
package reload

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often, at most, files are checked for changes.
const DefaultInterval = 2 * time.Second

// MaxFileBytes bounds what is read of a file.
const MaxFileBytes = 1 << 20

// Options tune how file-backed configuration is reloaded. The zero value works.
type Options struct {
	// Interval is the least time between two checks of the files. Default
	// DefaultInterval.
	Interval time.Duration
	// Logger receives a line for each reload and each failed one. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// RequireStable takes a changed version in only once two consecutive checks (an
	// Interval apart) read the same contents, so that a file read while it is being
	// rewritten in place (truncated, then written) is never taken in half-written.
	// A change then takes up to two intervals. Default false: taken at the first check.
	RequireStable bool
}

// Defaults fills in the zero fields.
func (o *Options) Defaults() {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Files is a value parsed from files, parsed again when their contents change.
type Files[T any] struct {
	what  string
	paths []string
	parse func(data [][]byte) (T, error)
	opts  Options

	cur     atomic.Pointer[version[T]]
	nextDue atomic.Int64 // Unix nanoseconds of the next check
	mu      sync.Mutex   // held by the one caller checking the files
	badSum  [32]byte     // contents that failed last, so that each is logged once
	pending [32]byte     // with RequireStable: changed contents seen at the last check

	stateMu sync.Mutex
	state   State
}

type version[T any] struct {
	value T
	sum   [32]byte
}

// State is how the value in force came to be, for metrics and status pages.
type State struct {
	// Loaded is when the version in force was read and taken in.
	Loaded time.Time
	// Checked is when the files were last checked.
	Checked time.Time
	// Err is why the files, as they were at the last check, are not in force: they
	// cannot be read or do not parse. Nil when they are in force (or a change is
	// waiting to be read again, with RequireStable).
	Err error
	// ErrSince is when Err was first seen.
	ErrSince time.Time
	// Failures counts failed versions: each new unreadable or invalid contents (the
	// same failure seen again at later checks counts once).
	Failures uint64
}

// NewFile is New for one file whose contents parse reads; a parse error names the
// file.
func NewFile[T any](what, path string, parse func([]byte) (T, error), opts Options) (*Files[T], error) {
	return New(what, []string{path}, func(data [][]byte) (T, error) {
		v, err := parse(data[0])
		if err != nil {
			return v, fmt.Errorf("%s: %w", path, err)
		}
		return v, nil
	}, opts)
}

// New reads and parses the files; an error stops there. what names the value in logs.
func New[T any](what string, paths []string, parse func([][]byte) (T, error), opts Options) (*Files[T], error) {
	opts.Defaults()
	r := &Files[T]{what: what, paths: paths, parse: parse, opts: opts}
	data, sum, err := readAll(paths)
	if err != nil {
		return nil, err
	}
	v, err := parse(data)
	if err != nil {
		return nil, err
	}
	r.cur.Store(&version[T]{v, sum})
	now := opts.Now()
	r.state = State{Loaded: now, Checked: now}
	r.nextDue.Store(now.Add(opts.Interval).UnixNano())
	return r, nil
}

// State returns how the value in force came to be.
func (r *Files[T]) State() State {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	return r.state
}

// Get returns the value in force, checking the files first when a check is due. While
// one caller checks, the others get the value in force without waiting.
func (r *Files[T]) Get() T {
	if now := r.opts.Now(); now.UnixNano() >= r.nextDue.Load() && r.mu.TryLock() {
		if now.UnixNano() >= r.nextDue.Load() {
			r.check(now)
			r.nextDue.Store(now.Add(r.opts.Interval).UnixNano())
		}
		r.mu.Unlock()
	}
	return r.cur.Load().value
}

// check reloads the files if their contents changed. Called with mu held.
func (r *Files[T]) check(now time.Time) {
	data, sum, err := readAll(r.paths)
	switch {
	case err != nil:
		r.fail(now, err, "cannot read "+r.what+"; keeping the one in force")
	case sum == r.cur.Load().sum:
		r.pending = [32]byte{}
		r.succeed(now, false)
	case sum == r.badSum:
		r.setChecked(now) // failing as before: logged and counted once
	case r.opts.RequireStable && sum != r.pending:
		r.pending = sum // changed since the last check: read it again at the next
		r.setChecked(now)
	default:
		r.pending = [32]byte{}
		v, err := r.parse(data)
		if err != nil {
			r.badSum = sum
			r.fail(now, err, "invalid "+r.what+"; keeping the one in force")
			return
		}
		r.cur.Store(&version[T]{v, sum})
		r.succeed(now, true)
		r.opts.Logger.Info(r.what+" reloaded", "files", r.paths)
	}
}

func (r *Files[T]) setChecked(now time.Time) {
	r.stateMu.Lock()
	r.state.Checked = now
	r.stateMu.Unlock()
}

// fail records a failed check, logging and counting each distinct failure once.
func (r *Files[T]) fail(now time.Time, err error, msg string) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	r.state.Checked = now
	if r.state.Err != nil && r.state.Err.Error() == err.Error() {
		return
	}
	r.state.Err, r.state.ErrSince = err, now
	r.state.Failures++
	r.opts.Logger.Error(msg, "err", err)
}

// succeed records a check that found the files in force.
func (r *Files[T]) succeed(now time.Time, loaded bool) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	r.state.Checked = now
	if loaded {
		r.state.Loaded = now
	}
	if r.state.Err != nil && !loaded {
		r.opts.Logger.Info(r.what+" is back to the one in force", "files", r.paths)
	}
	r.state.Err, r.state.ErrSince = nil, time.Time{}
	r.badSum = [32]byte{}
}

// readAll reads the files and returns their contents and a hash of them all.
func readAll(paths []string) ([][]byte, [32]byte, error) {
	h := sha256.New()
	data := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := ReadFile(p)
		if err != nil {
			return nil, [32]byte{}, err
		}
		data[i] = b
		_ = binary.Write(h, binary.BigEndian, int64(len(b)))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return data, sum, nil
}

// ReadFile reads a file of at most MaxFileBytes.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileBytes)
	}
	return b, nil
}

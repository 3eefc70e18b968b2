// Package reload keeps a value parsed from files up to date with them: the files are
// checked at most once per interval, when the value is asked for, and parsed again only
// when their contents changed. An unreadable or invalid new version is logged once and
// the value in force is kept.
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
}

type version[T any] struct {
	value T
	sum   [32]byte
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
	r.nextDue.Store(opts.Now().Add(opts.Interval).UnixNano())
	return r, nil
}

// Get returns the value in force, checking the files first when a check is due. While
// one caller checks, the others get the value in force without waiting.
func (r *Files[T]) Get() T {
	if now := r.opts.Now(); now.UnixNano() >= r.nextDue.Load() && r.mu.TryLock() {
		if now.UnixNano() >= r.nextDue.Load() {
			r.check()
			r.nextDue.Store(now.Add(r.opts.Interval).UnixNano())
		}
		r.mu.Unlock()
	}
	return r.cur.Load().value
}

// check reloads the files if their contents changed. Called with mu held.
func (r *Files[T]) check() {
	data, sum, err := readAll(r.paths)
	if err != nil {
		r.opts.Logger.Error("cannot read "+r.what+"; keeping the one in force", "err", err)
		return
	}
	if sum == r.cur.Load().sum || sum == r.badSum {
		return
	}
	v, err := r.parse(data)
	if err != nil {
		r.badSum = sum
		r.opts.Logger.Error("invalid "+r.what+"; keeping the one in force", "err", err)
		return
	}
	r.badSum = [32]byte{}
	r.cur.Store(&version[T]{v, sum})
	r.opts.Logger.Info(r.what+" reloaded", "files", r.paths)
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

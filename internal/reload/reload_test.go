package reload

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// nonEmpty parses a file's text; an empty file is an error.
func nonEmpty(data [][]byte) (string, error) {
	if len(data[0]) == 0 {
		return "", errors.New("empty")
	}
	return string(data[0]), nil
}

func newFiles(t *testing.T, content string, stable bool) (*Files[string], string, *clock, *bytes.Buffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	c := &clock{t: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
	var logs bytes.Buffer
	f, err := New("test file", []string{path}, nonEmpty, Options{Interval: time.Second, Now: c.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), RequireStable: stable})
	require.NoError(t, err)
	return f, path, c, &logs
}

// A missing file is logged once, not at every check, and shown in State until it is
// back; the value in force stays.
func TestMissingFileLoggedOnce(t *testing.T) {
	f, path, c, logs := newFiles(t, "v1", false)
	loaded := f.State().Loaded
	require.NoError(t, os.Remove(path))
	for range 5 {
		c.Advance(time.Second)
		assert.Equal(t, "v1", f.Get())
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "cannot read test file"), logs.String())
	st := f.State()
	require.Error(t, st.Err)
	assert.ErrorIs(t, st.Err, os.ErrNotExist)
	assert.Equal(t, loaded.Add(time.Second), st.ErrSince, "since the first check that failed")
	assert.Equal(t, uint64(1), st.Failures)
	assert.Equal(t, loaded, st.Loaded, "the version in force was loaded at the start")

	require.NoError(t, os.WriteFile(path, []byte("v1"), 0o600))
	c.Advance(time.Second)
	assert.Equal(t, "v1", f.Get())
	assert.NoError(t, f.State().Err, "the file is back, as it was")
	assert.Contains(t, logs.String(), "test file is back to the one in force")
}

// An invalid version is logged and counted once however many checks see it.
func TestInvalidVersionCountedOnce(t *testing.T) {
	f, path, c, logs := newFiles(t, "v1", false)
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	for range 3 {
		c.Advance(time.Second)
		assert.Equal(t, "v1", f.Get())
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "invalid test file"), logs.String())
	assert.EqualError(t, f.State().Err, "empty")
	assert.Equal(t, uint64(1), f.State().Failures)

	require.NoError(t, os.WriteFile(path, []byte("v2"), 0o600))
	c.Advance(time.Second)
	assert.Equal(t, "v2", f.Get())
	assert.NoError(t, f.State().Err)
	assert.Equal(t, c.Now(), f.State().Loaded)
}

// With RequireStable, a version read once (a file caught between its truncation and
// the end of its rewrite) is not taken in; the version read twice in a row is.
func TestRequireStable(t *testing.T) {
	f, path, c, _ := newFiles(t, "v1", true)
	require.NoError(t, os.WriteFile(path, []byte("v"), 0o600)) // caught half-written
	c.Advance(time.Second)
	assert.Equal(t, "v1", f.Get(), "read once: not taken in")
	require.NoError(t, os.WriteFile(path, []byte("v2"), 0o600)) // the write ends
	c.Advance(time.Second)
	assert.Equal(t, "v1", f.Get(), "changed again since the last check: not taken in")
	c.Advance(time.Second)
	assert.Equal(t, "v2", f.Get(), "the same at two checks in a row: taken in")
	assert.NoError(t, f.State().Err)
}

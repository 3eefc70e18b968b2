package policy

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/reload"
)

// An empty or cut-off document is not a policy: each input of issue 20 item 1 is an
// error that says what to add (the zero policy would give a `slots: 0` group a slot
// and drop every blocker, window and gap).
func TestParseFileRefusesHalfWrittenPolicy(t *testing.T) {
	for in, want := range map[string]string{
		"":                               `empty document: a policy file starts with "apiVersion: rebootmanager/v1"`,
		"\n  \n":                         `empty document`,
		"defaults:\n  slots: 1\n":        `apiVersion: missing: add "apiVersion: rebootmanager/v1" as the file's first line`,
		example:                          `apiVersion: missing`,
		"apiVersion: rebootmanager/v2\n": `apiVersion: "rebootmanager/v2" is not "rebootmanager/v1"`,
	} {
		_, err := ParseFile([]byte(in))
		if assert.Error(t, err, "%q", in) {
			assert.Contains(t, err.Error(), want, "%q", in)
		}
	}
	c, err := ParseFile([]byte("apiVersion: rebootmanager/v1\n" + example))
	require.NoError(t, err)
	assert.Equal(t, 0, *c.Group("etcd").Slots)
}

type fileClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fileClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fileClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A policy file rewritten in place and read between the truncation and the write,
// or set to "" (a ConfigMap edit), keeps the last valid policy in force, and says so:
// State, the config metrics and one log line per distinct error.
func TestPolicyFileRewrittenInPlace(t *testing.T) {
	full := "apiVersion: rebootmanager/v1\n" + example
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(full), 0o600))
	clock := &fileClock{t: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
	start := clock.Now()
	var logs bytes.Buffer
	f, err := LoadFile(path, reload.Options{Interval: 10 * time.Second, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	p := New(Options{Config: f.Config, ConfigState: f.State, Now: clock.Now})
	inForce := func(msg string) {
		t.Helper()
		c := p.Config()
		assert.Equal(t, 0, *c.Group("etcd").Slots, msg)
		assert.NotNil(t, c.Blockers.Alerts, msg)
		assert.True(t, c.Blockers.NotReadyNodes, msg)
		assert.Equal(t, 10*time.Minute, c.Group("workers").MinGap.Duration, msg)
		assert.NotEmpty(t, c.Group("workers").Windows, msg)
	}
	metrics := func(successful, failures int) {
		t.Helper()
		want := strings.NewReader(strings.NewReplacer("{S}", itoa(successful), "{F}", itoa(failures), "{T}", itoa(int(start.Unix()))).Replace(`
# HELP rebootmanager_config_last_reload_successful 1 while the policy file, as last read, is the policy in force; 0 while it cannot be read or is invalid (the last valid version stays in force). Only with --config.
# TYPE rebootmanager_config_last_reload_successful gauge
rebootmanager_config_last_reload_successful {S}
# HELP rebootmanager_config_last_reload_success_timestamp_seconds When the policy in force was read from the policy file (Unix seconds). Only with --config.
# TYPE rebootmanager_config_last_reload_success_timestamp_seconds gauge
rebootmanager_config_last_reload_success_timestamp_seconds {T}
# HELP rebootmanager_config_reload_failures_total Versions of the policy file that could not be read or were invalid; each counts once, however many checks see it. Only with --config.
# TYPE rebootmanager_config_reload_failures_total counter
rebootmanager_config_reload_failures_total {F}
`))
		assert.NoError(t, testutil.CollectAndCompare(p, want, "rebootmanager_config_last_reload_successful",
			"rebootmanager_config_last_reload_success_timestamp_seconds", "rebootmanager_config_reload_failures_total"))
	}
	inForce("as loaded")
	metrics(1, 0)

	// Truncated, caught by a check, then written: the cut version (valid YAML, with
	// its apiVersion) is seen once and never taken in.
	cut := full[:strings.Index(full, "  windows:")] // apiVersion, defaults: slots: 1
	_, err = ParseFile([]byte(cut))
	require.NoError(t, err, "the cut file parses: only its instability gives it away")
	require.NoError(t, os.WriteFile(path, []byte(cut), 0o600))
	clock.Advance(10 * time.Second)
	inForce("the cut file, read once")
	require.NoError(t, os.WriteFile(path, []byte(full), 0o600))
	clock.Advance(10 * time.Second)
	inForce("the file, written in full")
	assert.Empty(t, f.State().Error)

	// Emptied (config.yaml: ""), for good: invalid, shown, logged once.
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	for range 4 {
		clock.Advance(10 * time.Second)
		inForce("emptied")
	}
	st := p.ConfigState()
	assert.Equal(t, path, st.Source)
	assert.Equal(t, path+`: empty document: a policy file starts with "apiVersion: rebootmanager/v1"`, st.Error)
	assert.Equal(t, start.Add(40*time.Second), st.ErrorSince, "seen at the second check (the first only notes the change)")
	assert.Equal(t, start, st.Loaded)
	assert.Equal(t, 1, strings.Count(logs.String(), "invalid policy file"), logs.String())
	metrics(0, 1)

	// Without apiVersion: another error, logged once more.
	require.NoError(t, os.WriteFile(path, []byte("defaults:\n  slots: 1\n"), 0o600))
	for range 3 {
		clock.Advance(10 * time.Second)
		inForce("no apiVersion")
	}
	assert.Contains(t, p.ConfigState().Error, "apiVersion: missing")
	assert.Equal(t, 2, strings.Count(logs.String(), "invalid policy file"), logs.String())
	metrics(0, 2)

	// Removed: logged once.
	require.NoError(t, os.Remove(path))
	for range 3 {
		clock.Advance(10 * time.Second)
		inForce("removed")
	}
	assert.Equal(t, 1, strings.Count(logs.String(), "cannot read policy file"), logs.String())
	metrics(0, 3)

	// A valid new version is taken in.
	require.NoError(t, os.WriteFile(path, []byte("apiVersion: rebootmanager/v1\ndefaults: {slots: 2}\n"), 0o600))
	for range 2 {
		clock.Advance(10 * time.Second)
		p.Config()
	}
	assert.Equal(t, 2, *p.Config().Group("etcd").Slots)
	assert.Empty(t, p.ConfigState().Error)
	assert.Equal(t, clock.Now(), p.ConfigState().Loaded)
}

func itoa(i int) string { return strconv.Itoa(i) }

package policy

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/reload"
)

const ordered = `apiVersion: rebootmanager/v1
groups:
  control-plane: {}
  workers:
    slots: 3
    after: [control-plane]
  gpu:
    after: [workers, control-plane]
`

// Issue 17 item 4: a group may go after others; Policy.After answers the lock.
func TestParseGroupOrder(t *testing.T) {
	c, err := ParseFile([]byte(ordered))
	require.NoError(t, err)
	p := New(Options{Config: func() *Config { return c }})
	assert.Equal(t, []string{"control-plane"}, p.After("workers"))
	assert.Equal(t, []string{"workers", "control-plane"}, p.After("gpu"), "in the file's order")
	assert.Empty(t, p.After("control-plane"))
	assert.Empty(t, p.After("other"), "a group not in the file goes after nothing")
	assert.Empty(t, p.After("default"))
	assert.Equal(t, []string{"control-plane"}, c.Group("workers").After)
	assert.Equal(t, 3, *c.Group("workers").Slots)

	// "default" (the group of nodes whose Zincati names none) may be named.
	c, err = Parse([]byte("groups: {workers: {after: [default]}}"))
	require.NoError(t, err)
	assert.Equal(t, []string{"default"}, c.Group("workers").After)
}

// Every invalid order is refused with the field's path; a cycle is named in full.
func TestParseGroupOrderErrors(t *testing.T) {
	for in, want := range map[string]string{
		"groups: {workers: {after: [control-plane]}}":                                  `groups.workers.after[0]: group "control-plane" is not in the policy's groups (list it under groups, even as "control-plane: {}")`,
		"groups: {workers: {after: [workers]}}":                                        `groups.workers.after[0]: a group cannot go after itself`,
		"groups: {cp: {}, workers: {after: [cp, cp]}}":                                 `groups.workers.after[1]: "cp" is listed twice`,
		"groups: {cp: {}, workers: {after: ['']}}":                                     `groups.workers.after[0]: "" is not a FleetLock group name`,
		"defaults: {after: [cp]}":                                                      `defaults.after: set after on the groups that go after others, not in defaults`,
		"groups: {a: {after: [b]}, b: {after: [a]}}":                                   `groups.a.after: the group order has a cycle: a → b → a`,
		"groups: {a: {after: [c]}, b: {after: [a]}, c: {after: [b]}, d: {after: [a]}}": `groups.a.after: the group order has a cycle: a → c → b → a`,
		"groups: {default: {after: [w]}, w: {after: [default]}}":                       `groups.default.after: the group order has a cycle: default → w → default`,
	} {
		_, err := Parse([]byte(in))
		if assert.Error(t, err, in) {
			assert.Equal(t, want, err.Error(), in)
		}
	}
}

// A reload whose order has a cycle keeps the previous policy in force and says why,
// as any invalid reload does; fixed, it is taken in.
func TestPolicyFileReloadWithOrderCycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(ordered), 0o600))
	clock := &fileClock{t: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
	var logs bytes.Buffer
	f, err := LoadFile(path, reload.Options{Interval: 10 * time.Second, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	p := New(Options{Config: f.Config, ConfigState: f.State, Now: clock.Now})
	require.Equal(t, []string{"control-plane"}, p.After("workers"))

	cycle := strings.Replace(ordered, "control-plane: {}", "control-plane: {after: [gpu]}", 1)
	require.NoError(t, os.WriteFile(path, []byte(cycle), 0o600))
	for range 3 {
		clock.Advance(10 * time.Second)
		assert.Equal(t, []string{"control-plane"}, p.After("workers"), "the previous policy stays in force")
		assert.Empty(t, p.After("control-plane"))
	}
	assert.Equal(t, path+": groups.control-plane.after: the group order has a cycle: control-plane → gpu → workers → control-plane",
		p.ConfigState().Error)
	assert.Equal(t, 1, strings.Count(logs.String(), "invalid policy file"), logs.String())

	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(ordered, "after: [control-plane]", "after: []", 1)), 0o600))
	for range 2 {
		clock.Advance(10 * time.Second)
		p.Config()
	}
	assert.Empty(t, p.ConfigState().Error)
	assert.Empty(t, p.After("workers"), "the fixed file is in force")
}

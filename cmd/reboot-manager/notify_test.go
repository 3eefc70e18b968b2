package main

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --notify-url defaults to $NOTIFY_URL (a Secret in the chart), the flag wins; the
// notifier is off without either.
func TestParseConfigNotify(t *testing.T) {
	c, err := parseConfig(nil, env(nil), io.Discard)
	require.NoError(t, err)
	assert.Empty(t, c.notify.url)
	assert.Equal(t, 15*time.Minute, c.notify.drainBlockedAfter)
	n, err := newNotifier(c.notify, nil, nil)
	require.NoError(t, err)
	assert.Nil(t, n)

	c, err = parseConfig(nil, env(map[string]string{"NOTIFY_URL": "generic+https://example.com/hook"}), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "generic+https://example.com/hook", c.notify.url)
	c, err = parseConfig([]string{"--notify-url=slack://token@channel", "--notify-drain-blocked-after=5m"},
		env(map[string]string{"NOTIFY_URL": "generic+https://example.com/hook"}), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "slack://token@channel", c.notify.url)
	assert.Equal(t, 5*time.Minute, c.notify.drainBlockedAfter)
}

package main

import (
	"bytes"
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

// --help never prints the notification URL, whose default comes from $NOTIFY_URL (a
// Secret in the chart) and carries a token.
func TestHelpHidesNotifyURL(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"--help"}, env(map[string]string{"NOTIFY_URL": "slack://secrettoken@chan"}), &out)
	require.Error(t, err)
	assert.Contains(t, out.String(), "-notify-url")
	assert.NotContains(t, out.String(), "secrettoken")
}

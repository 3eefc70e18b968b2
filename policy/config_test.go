package policy

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const example = `
defaults:
  slots: 1
  windows:
    - days: [Sat, Sun]
      start: "02:00"
      end: "06:00"
      timeZone: Europe/Berlin
groups:
  workers:
    slots: 3
    minGap: 10m
    windows:
      - days: [Mon, Tue, Wed, Thu, Fri]
        start: "22:00"
        end: "04:00"
        timeZone: America/New_York
  etcd:
    slots: 0
releaseWhenReady: true
staleHolderAfter: 30m
blockers:
  alerts:
    url: http://prometheus.monitoring:9090
    match: {severity: critical|page}
  pods:
    - selector: app=backup
      scope: node
  notReadyNodes: true
`

func TestParseExample(t *testing.T) {
	c, err := Parse([]byte(example))
	require.NoError(t, err)
	assert.Equal(t, 3, *c.Group("workers").Slots)
	assert.Equal(t, 0, *c.Group("etcd").Slots, "0 stops a group")
	assert.Equal(t, 1, *c.Group("other").Slots)
	assert.Equal(t, 10*time.Minute, c.Group("workers").MinGap.Duration)
	assert.Equal(t, "Sat,Sun 02:00-06:00 Europe/Berlin", c.Group("etcd").Windows[0].String(), "a group without windows takes the defaults'")
	assert.Equal(t, 30*time.Minute, c.StaleHolderAfter.Duration)
	assert.Equal(t, DefaultAlertsInterval, c.Blockers.Alerts.Interval.Duration)
	assert.Equal(t, ScopeNode, c.Blockers.Pods[0].Scope)
	assert.True(t, c.Blockers.NotReadyNodes)

	empty, err := Parse([]byte(""))
	require.NoError(t, err)
	assert.Equal(t, 1, *empty.Group("any").Slots)
	assert.True(t, empty.Group("any").WindowOpen(time.Now()), "no windows: always open")
}

// Every invalid field is refused with its path.
func TestParseErrorsNameTheField(t *testing.T) {
	for in, want := range map[string]string{
		"groups: {workers: {slots: -1}}":                                                                         "groups.workers.slots: -1 is negative",
		"groups: {workers: {slot: 2}}":                                                                           `unknown field "slot"`,
		"groups: {workers: {slots: two}}":                                                                        "slots: want int, got string",
		"groups: {'a b': {slots: 1}}":                                                                            "groups.a b: not a FleetLock group name",
		"defaults: {minGap: 10}":                                                                                 "a duration is a string",
		"defaults: {minGap: 10 minutes}":                                                                         `"10 minutes" is not a duration`,
		"groups: {w: {windows: [{start: '25:00', end: '01:00'}]}}":                                               `groups.w.windows[0].start: "25:00" is not a time of day`,
		"groups: {w: {windows: [{start: '1:00', end: '02:00'}]}}":                                                `groups.w.windows[0].start: "1:00" is not a time of day`,
		"groups: {w: {windows: [{start: '01:00', end: '01:00'}]}}":                                               "groups.w.windows[0].start, end: both 01:00",
		"groups: {w: {windows: [{start: '01:00', end: '02:00', timeZone: Europe/Berln}]}}":                       `groups.w.windows[0].timeZone: unknown time zone "Europe/Berln"`,
		"groups: {w: {windows: [{days: [Mon, Funday], start: '01:00', end: '02:00'}]}}":                          `groups.w.windows[0].days[1]: "Funday" is not one of`,
		"blockers: {alerts: {url: prometheus:9090}}":                                                             `blockers.alerts.url: not an http(s) URL`,
		"blockers: {alerts: {url: 'http://p', timeout: 10ms}}":                                                   "blockers.alerts.timeout: 10ms is under a second",
		"blockers: {alerts: {url: 'http://p', bearerTokenFile: /t, basicAuth: {username: u, passwordFile: /p}}}": "bearerTokenFile and basicAuth: set one",
		"blockers: {alerts: {url: 'http://p', basicAuth: {username: u}}}":                                        "blockers.alerts.basicAuth: username and passwordFile are both required",
		"blockers: {alerts: {url: 'http://p', basicAuth: {username: u, password: x}}}":                           `unknown field "password"`,
		"blockers: {alerts: {url: 'http://p', tls: {certFile: /c}}}":                                             "blockers.alerts.tls: certFile and keyFile",
		"blockers: {alerts: {url: 'http://p', headers: {Authorization: 'Bearer x'}}}":                            "blockers.alerts.headers.Authorization: may not be set",
		"blockers: {alerts: {url: 'http://p', match: {severity: '(' }}}":                                         "blockers.alerts.match.severity: error parsing regexp",
		"blockers: {alerts: {url: 'http://p', interval: 10ms}}":                                                  "blockers.alerts.interval: 10ms is under a second",
		"blockers: {pods: [{selector: ''}]}":                                                                     `blockers.pods[0].selector: "" is not a non-empty label selector`,
		"blockers: {pods: [{selector: 'a=b', scope: zone}]}":                                                     `blockers.pods[0].scope: "zone" is not "cluster" or "node"`,
		"releaseWhenReady: false":                                                                                "releaseWhenReady: false is no longer supported",
		"{":                                                                                                      "not YAML or JSON",
	} {
		_, err := Parse([]byte(in))
		if assert.Error(t, err, in) {
			assert.Contains(t, err.Error(), want, in)
		}
	}
}

// Credentials in the alerts URL are refused, and the error does not repeat them (it
// is logged and shown on /status).
func TestAlertsURLCredentialsRefused(t *testing.T) {
	for _, u := range []string{"http://admin:hunter2@prometheus:9090", "admin:hunter2@prometheus:9090", "https://admin:hunter2@p/"} {
		_, err := Parse([]byte(fmt.Sprintf("blockers: {alerts: {url: %q}}", u)))
		require.Error(t, err, u)
		assert.Contains(t, err.Error(), "blockers.alerts.url", u)
		assert.NotContains(t, err.Error(), "hunter2", u)
	}
	c, err := Parse([]byte("blockers: {alerts: {url: 'https://prometheus:9090/prom/?token=hunter2#x'}}"))
	require.NoError(t, err)
	assert.Equal(t, "https://prometheus:9090/prom/", c.Blockers.Alerts.RedactedURL())
}

func TestWindowOpen(t *testing.T) {
	c, err := Parse([]byte(example))
	require.NoError(t, err)
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	workers := c.Group("workers")
	at := func(day, hhmm string) time.Time {
		// 2026-11-16 is a Monday.
		days := map[string]int{"Mon": 16, "Tue": 17, "Wed": 18, "Thu": 19, "Fri": 20, "Sat": 21, "Sun": 22}
		tm, err := time.ParseInLocation("2006-01-02 15:04", fmt.Sprintf("2026-11-%02d %s", days[day], hhmm), ny)
		require.NoError(t, err)
		return tm.UTC() // the clock is UTC; the window is New York's
	}
	for _, tt := range []struct {
		day, hhmm string
		open      bool
	}{
		{"Mon", "21:59", false},
		{"Mon", "22:00", true},
		{"Mon", "23:59", true},
		{"Tue", "00:00", true}, // Monday's window, after midnight
		{"Tue", "03:59", true},
		{"Tue", "04:00", false},
		{"Fri", "23:00", true},
		{"Sat", "03:00", true},  // Friday's window crosses into Saturday
		{"Sat", "22:30", false}, // no window starts on Saturday
		{"Sun", "23:00", false},
		{"Mon", "03:00", false}, // Sunday started none
	} {
		assert.Equal(t, tt.open, workers.WindowOpen(at(tt.day, tt.hhmm)), "%s %s New York", tt.day, tt.hhmm)
	}
	// Berlin's weekend window, seen from a UTC clock: 02:00 CET is 01:00 UTC.
	berlin := c.Group("etcd")
	assert.True(t, berlin.WindowOpen(time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)))
	assert.False(t, berlin.WindowOpen(time.Date(2026, 11, 21, 0, 59, 0, 0, time.UTC)))
	assert.False(t, berlin.WindowOpen(time.Date(2026, 11, 20, 1, 30, 0, 0, time.UTC)), "Friday")
}

package main

import (
	"flag"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/notify"
)

// notifyConfig is what the notification flags say.
type notifyConfig struct {
	url               string
	drainBlockedAfter time.Duration
}

// flags registers --notify-url (default $NOTIFY_URL, so that a Secret can hold it) and
// --notify-drain-blocked-after.
func (c *notifyConfig) flags(fs *flag.FlagSet, getenv func(string) string) {
	c.url = getenv("NOTIFY_URL")
	fs.Var(secretString{&c.url}, "notify-url", "where to tell about drains, reboots, returns and replacements: a shoutrrr URL (slack://, teams://, matrix://, generic+https://...); default $NOTIFY_URL; off when empty")
	fs.DurationVar(&c.drainBlockedAfter, "notify-drain-blocked-after", notify.DefaultDrainBlockedAfter, "how long a drain stays blocked by a PodDisruptionBudget before --notify-url is told")
}

// newNotifier returns the notifier --notify-url asks for, or nil. Its Start blocks
// until the context ends.
func newNotifier(c notifyConfig, client kubernetes.Interface, log *slog.Logger) (*notify.Notifier, error) {
	if c.url == "" {
		return nil, nil
	}
	// client-go's events library names this replica's Events so.
	host, _ := os.Hostname()
	return notify.New(notify.Options{
		URL: c.url, Client: client, Instance: notify.Controller + "-" + host,
		DrainBlockedAfter: c.drainBlockedAfter, Logger: log.With("component", "notify"),
	})
}

// secretString is a flag.Value whose value is never shown: the URL of --notify-url
// carries a token, and --help would print a default taken from $NOTIFY_URL.
type secretString struct{ v *string }

// String returns "": nothing of the value is printed.
func (secretString) String() string { return "" }

// Set stores the value.
func (s secretString) Set(v string) error {
	*s.v = v
	return nil
}

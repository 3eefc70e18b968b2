package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// Config is the configuration file (YAML or JSON). docs/operations.md shows an
// example; the zero value (no file) is one slot per group, no windows, no gap, the
// health gate on, stale holders released after DefaultStaleHolderAfter and no blockers.
type Config struct {
	// APIVersion is the file format's version, APIVersion. A file must carry it (see
	// ParseFile): an empty or cut-off file is then invalid, never the zero policy.
	APIVersion string `json:"apiVersion,omitempty"`
	// Defaults apply to every group, and to each field a group leaves out.
	Defaults Group `json:"defaults"`
	// Groups are per-group settings, by FleetLock group name.
	Groups map[string]Group `json:"groups,omitempty"`
	// ReleaseWhenReady is kept so that old files that say true still load: the health
	// gate is always on, and false is refused (Validate).
	ReleaseWhenReady *bool `json:"releaseWhenReady,omitempty"`
	// StaleHolderAfter releases a holder that rebooted (new boot ID) and has been Ready
	// this long without calling steady-state (its Zincati cannot reach us). 0: never.
	// Default DefaultStaleHolderAfter.
	StaleHolderAfter *Duration `json:"staleHolderAfter,omitempty"`
	// Blockers refuse new grants while they find something wrong.
	Blockers Blockers `json:"blockers"`
	// Replacement tunes the replacement of nodes that fail to return (groups opt in
	// with replaceAfter).
	Replacement Replacement `json:"replacement"`
}

// Replacement tunes the replacement of failed nodes.
type Replacement struct {
	// DryRun runs every guard and reports what would be replaced, replacing nothing.
	DryRun bool `json:"dryRun,omitempty"`
	// MaxInFlight bounds the replacements under way at once, all groups together (one
	// per cloud instance group at most, always). Default 1.
	MaxInFlight int `json:"maxInFlight,omitempty"`
	// MaxFailures stops all replacing once this many replacements have failed (their
	// records are kept until an operator deletes them): a bad OS release makes every
	// rebooted node fail, and replacing the fleet would not help. Default 3.
	MaxFailures int `json:"maxFailures,omitempty"`
	// Timeout is how long a new node may take to be Ready after the old instance was
	// terminated before the replacement counts as failed. Default 20m.
	Timeout Duration `json:"timeout,omitempty"`
	// AllowGroups opts in cloud instance groups (such as Auto Scaling group names)
	// without the opt-in tag.
	AllowGroups []string `json:"allowGroups,omitempty"`
	// Interval is how often the records of grants are looked at. Default 10s.
	Interval Duration `json:"interval,omitempty"`
}

// Group is the settings of one group. A field left out takes Defaults' value.
type Group struct {
	// Slots is how many nodes of the group may reboot at once; 0 stops the group's
	// reboots. Default 1.
	Slots *int `json:"slots,omitempty"`
	// Windows are when new reboots may start; none: any time. A node granted inside a
	// window finishes its reboot after the window closes.
	Windows []Window `json:"windows,omitempty"`
	// MinGap is the least time between a release in the group and the next grant.
	MinGap Duration `json:"minGap,omitempty"`
	// ReplaceAfter replaces, through its cloud instance group, a holder whose Node has
	// been NotReady or gone this long since its grant (docs/replacement.md). 0: never.
	ReplaceAfter Duration `json:"replaceAfter,omitempty"`
	// After names the groups this group goes after: its nodes are not granted a slot
	// while any node of those groups holds, claims or waits for one. Each must be a
	// group of Groups, or "default"; the order may not have a cycle. Not in Defaults.
	After []string `json:"after,omitempty"`
}

// Blockers are the checks that refuse new grants (never touching current holders).
type Blockers struct {
	// Alerts blocks while Prometheus reports a firing alert matching the filter.
	Alerts *AlertsBlocker `json:"alerts,omitempty"`
	// Pods blocks while pods matching a selector exist.
	Pods []PodsBlocker `json:"pods,omitempty"`
	// PodsInterval is how often the pods of Pods are listed. Default 15s.
	PodsInterval Duration `json:"podsInterval,omitempty"`
	// NotReadyNodes blocks a group while another of its nodes is not Ready.
	NotReadyNodes bool `json:"notReadyNodes,omitempty"`
}

// AlertsBlocker queries Prometheus' alerts API (GET <url>/api/v1/alerts).
// Credentials come from files, read at each request, never from this file or the URL:
// the URL is shown in replies, Events, logs and /status.
type AlertsBlocker struct {
	// URL is Prometheus' base URL, such as http://prometheus.monitoring:9090. It may
	// not carry credentials (user:password@).
	URL string `json:"url"`
	// Match maps label names to regular expressions (anchored, RE2) that a firing
	// alert's labels must all match, such as {severity: "critical|page"}. An alert
	// without the label does not match. Empty: every firing alert blocks.
	Match map[string]string `json:"match,omitempty"`
	// Interval is how often Prometheus is asked. Default 30s.
	Interval Duration `json:"interval,omitempty"`
	// Timeout bounds each query: one that takes longer fails (and blocks). Default
	// 10s.
	Timeout Duration `json:"timeout,omitempty"`
	// BearerTokenFile is a file holding a token sent as "Authorization: Bearer
	// TOKEN", such as a mounted ServiceAccount token.
	BearerTokenFile string `json:"bearerTokenFile,omitempty"`
	// BasicAuth sends HTTP Basic credentials.
	BasicAuth *BasicAuth `json:"basicAuth,omitempty"`
	// TLS verifies Prometheus' certificate (and presents a client certificate).
	TLS *TLSFiles `json:"tls,omitempty"`
	// Headers are sent with every request, such as {X-Scope-OrgID: team-a}. Not for
	// secrets (they show in the ConfigMap); Authorization may not be set here.
	Headers map[string]string `json:"headers,omitempty"`

	match  map[string]*regexp.Regexp
	client promconfig.HTTPClientConfig
}

// BasicAuth is HTTP Basic credentials: a user name and a file holding the password.
type BasicAuth struct {
	// Username is the user name.
	Username string `json:"username"`
	// PasswordFile holds the password (a trailing newline is dropped).
	PasswordFile string `json:"passwordFile"`
}

// TLSFiles are the files of a TLS client; each is read again when it changes.
type TLSFiles struct {
	// CAFile is the PEM bundle of the certificate authorities that sign Prometheus'
	// certificate. Default: the system's.
	CAFile string `json:"caFile,omitempty"`
	// CertFile and KeyFile are a client certificate and its key, for Prometheus
	// servers that require one.
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// ServerName is the name expected in Prometheus' certificate. Default: the URL's
	// host.
	ServerName string `json:"serverName,omitempty"`
}

// RedactedURL is the URL as it is shown: scheme, host and path, without user
// information, query or fragment.
func (a *AlertsBlocker) RedactedURL() string { return redactURL(a.URL) }

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "(an invalid URL)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// compile checks the alerts blocker and prepares its matchers and HTTP client config.
func (a *AlertsBlocker) compile() error {
	u, err := url.Parse(a.URL)
	switch {
	case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
		return errors.New("blockers.alerts.url: not an http(s) URL such as http://prometheus.monitoring:9090")
	case u.User != nil:
		return errors.New("blockers.alerts.url: credentials in the URL are not accepted (the URL is shown in replies, Events, logs and /status): use basicAuth or bearerTokenFile")
	case a.BearerTokenFile != "" && a.BasicAuth != nil:
		return errors.New("blockers.alerts: bearerTokenFile and basicAuth: set one")
	}
	a.match = map[string]*regexp.Regexp{}
	for label, expr := range a.Match {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return fmt.Errorf("blockers.alerts.match.%s: %w", label, err)
		}
		a.match[label] = re
	}
	if a.Interval.Duration == 0 {
		a.Interval.Duration = DefaultAlertsInterval
	}
	if a.Interval.Duration < time.Second {
		return fmt.Errorf("blockers.alerts.interval: %s is under a second", a.Interval)
	}
	if a.Timeout.Duration == 0 {
		a.Timeout.Duration = DefaultCheckTimeout
	}
	if a.Timeout.Duration < time.Second {
		return fmt.Errorf("blockers.alerts.timeout: %s is under a second", a.Timeout)
	}
	hc := promconfig.DefaultHTTPClientConfig
	// The credentials are added to every request, redirected ones too: a redirect
	// elsewhere must not receive them. A redirect is an answer that is not clean.
	hc.FollowRedirects = false
	hc.BearerTokenFile = a.BearerTokenFile
	if b := a.BasicAuth; b != nil {
		if b.Username == "" || b.PasswordFile == "" {
			return errors.New("blockers.alerts.basicAuth: username and passwordFile are both required")
		}
		hc.BasicAuth = &promconfig.BasicAuth{Username: b.Username, PasswordFile: b.PasswordFile}
	}
	if t := a.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			return errors.New("blockers.alerts.tls: certFile and keyFile: set both or neither")
		}
		hc.TLSConfig = promconfig.TLSConfig{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName}
	}
	if len(a.Headers) > 0 {
		hc.HTTPHeaders = &promconfig.Headers{Headers: map[string]promconfig.Header{}}
		for name, value := range a.Headers {
			if name == "" || strings.ContainsAny(name, " :\r\n") || strings.ContainsAny(value, "\r\n") {
				return fmt.Errorf("blockers.alerts.headers: %q is not a header name and value", name)
			}
			if _, reserved := promconfig.ReservedHeaders[http.CanonicalHeaderKey(name)]; reserved {
				return fmt.Errorf("blockers.alerts.headers.%s: may not be set (use basicAuth or bearerTokenFile for credentials)", name)
			}
			hc.HTTPHeaders.Headers[name] = promconfig.Header{Values: []string{value}}
		}
	}
	if err := hc.Validate(); err != nil {
		return fmt.Errorf("blockers.alerts: %w", err)
	}
	a.client = hc
	return nil
}

// PodsBlocker blocks while pods matching Selector exist (any phase but Succeeded and
// Failed), on the cluster or on the node asking.
type PodsBlocker struct {
	// Selector is a label selector, such as app=backup.
	Selector string `json:"selector"`
	// Namespace limits the search; empty: all namespaces.
	Namespace string `json:"namespace,omitempty"`
	// Scope is "cluster" (any such pod blocks every grant, the default) or "node" (a
	// pod blocks only the grant of the node it runs on).
	Scope string `json:"scope,omitempty"`

	selector labels.Selector
}

// Pod blocker scopes.
const (
	ScopeCluster = "cluster"
	ScopeNode    = "node"
)

// How often Prometheus is asked for alerts, and pods are listed, by default, and how
// long one check may take (the pods blocker's, always).
const (
	DefaultAlertsInterval = 30 * time.Second
	DefaultPodsInterval   = 15 * time.Second
	DefaultCheckTimeout   = 10 * time.Second
)

// APIVersion is the policy file format this package reads.
const APIVersion = "rebootmanager/v1"

// Duration is a time.Duration written as Go writes durations ("90s", "10m", "1h30m").
type Duration struct{ time.Duration }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"10m\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"10m\"", s)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// ParseFile reads and checks a policy file (the --config file, the ConfigMap's
// config.yaml): as Parse, and it must carry "apiVersion: rebootmanager/v1". An empty
// document, or one without apiVersion (a file caught while it was being rewritten, a
// ConfigMap key set to ""), is an error saying what to add, so that it never reads
// as the zero policy.
func ParseFile(data []byte) (*Config, error) {
	c, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if c.APIVersion == "" {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, fmt.Errorf("empty document: a policy file starts with \"apiVersion: %s\"", APIVersion)
		}
		return nil, fmt.Errorf("apiVersion: missing: add \"apiVersion: %s\" as the file's first line", APIVersion)
	}
	return c, nil
}

// Parse reads and checks a policy document. An error names the field, as a path such
// as groups.workers.windows[0].timeZone. apiVersion, if present, must be APIVersion;
// files are read with ParseFile, which requires it.
func Parse(data []byte) (*Config, error) {
	var c Config
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, decodeError(err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeError names the field of a decoding error.
func decodeError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("%s: want %s, got %s", te.Field, te.Type, te.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("unknown field %s", msg)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: "); ok {
		return errors.New(msg)
	}
	return err
}

// Validate checks every field and prepares windows, matchers and selectors; Parse
// calls it. An error names the field.
func (c *Config) Validate() error {
	if c.APIVersion != "" && c.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion: %q is not %q", c.APIVersion, APIVersion)
	}
	if c.ReleaseWhenReady != nil && !*c.ReleaseWhenReady {
		return errors.New("releaseWhenReady: false is no longer supported: a holder's slot is released only once it is back from its reboot (docs/operations.md, Health gate); remove the key")
	}
	if err := c.Defaults.compile("defaults"); err != nil {
		return err
	}
	names := make([]string, 0, len(c.Groups))
	for name := range c.Groups {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !fleetlock.ValidGroup(name) {
			return fmt.Errorf("groups.%s: not a FleetLock group name (letters, digits, '.' and '-')", name)
		}
		g := c.Groups[name]
		if err := g.compile("groups." + name); err != nil {
			return err
		}
		c.Groups[name] = g
	}
	if err := c.checkOrder(names); err != nil {
		return err
	}
	if a := c.Blockers.Alerts; a != nil {
		if err := a.compile(); err != nil {
			return err
		}
	}
	r := &c.Replacement
	switch {
	case r.MaxInFlight < 0:
		return fmt.Errorf("replacement.maxInFlight: %d is negative", r.MaxInFlight)
	case r.MaxFailures < 0:
		return fmt.Errorf("replacement.maxFailures: %d is negative", r.MaxFailures)
	}
	if r.MaxInFlight == 0 {
		r.MaxInFlight = 1
	}
	if r.MaxFailures == 0 {
		r.MaxFailures = 3
	}
	if r.Timeout.Duration == 0 {
		r.Timeout.Duration = 20 * time.Minute
	}
	if r.Interval.Duration == 0 {
		r.Interval.Duration = 10 * time.Second
	}
	if r.Interval.Duration < time.Second {
		return fmt.Errorf("replacement.interval: %s is under a second", r.Interval)
	}
	if err := c.checkReplaceAfter(); err != nil {
		return err
	}
	if c.Blockers.PodsInterval.Duration == 0 {
		c.Blockers.PodsInterval.Duration = DefaultPodsInterval
	}
	if c.Blockers.PodsInterval.Duration < time.Second {
		return fmt.Errorf("blockers.podsInterval: %s is under a second", c.Blockers.PodsInterval)
	}
	for i := range c.Blockers.Pods {
		p := &c.Blockers.Pods[i]
		field := fmt.Sprintf("blockers.pods[%d]", i)
		sel, err := labels.Parse(p.Selector)
		if err != nil || sel.Empty() {
			return fmt.Errorf("%s.selector: %q is not a non-empty label selector", field, p.Selector)
		}
		p.selector = sel
		switch p.Scope {
		case "":
			p.Scope = ScopeCluster
		case ScopeCluster, ScopeNode:
		default:
			return fmt.Errorf("%s.scope: %q is not %q or %q", field, p.Scope, ScopeCluster, ScopeNode)
		}
	}
	return nil
}

func (g *Group) compile(field string) error {
	if g.Slots != nil && *g.Slots < 0 {
		return fmt.Errorf("%s.slots: %d is negative", field, *g.Slots)
	}
	for i := range g.Windows {
		if err := g.Windows[i].compile(); err != nil {
			return fmt.Errorf("%s.windows[%d].%w", field, i, err)
		}
	}
	return nil
}

// checkOrder checks the groups' after lists (names: the groups, sorted): each names
// another group of Groups, or "default", once, and the order has no cycle. A cycle
// is named in full, each group followed by one it goes after: "a → b → a".
func (c *Config) checkOrder(names []string) error {
	if len(c.Defaults.After) > 0 {
		return errors.New("defaults.after: set after on the groups that go after others, not in defaults")
	}
	for _, name := range names {
		after := c.Groups[name].After
		for i, a := range after {
			field := fmt.Sprintf("groups.%s.after[%d]", name, i)
			_, known := c.Groups[a]
			switch {
			case !fleetlock.ValidGroup(a):
				return fmt.Errorf("%s: %q is not a FleetLock group name", field, a)
			case a == name:
				return fmt.Errorf("%s: a group cannot go after itself", field)
			case slices.Contains(after[:i], a):
				return fmt.Errorf("%s: %q is listed twice", field, a)
			case !known && a != "default":
				return fmt.Errorf("%s: group %q is not in the policy's groups (list it under groups, even as \"%s: {}\")", field, a, a)
			}
		}
	}
	// Depth first, from each group in name order, along each after list in its order.
	const (
		onPath = iota + 1 // 0: not visited yet
		done
	)
	state := map[string]int{}
	var path []string
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case onPath:
			cycle := append(path[slices.Index(path, name):], name)
			return fmt.Errorf("groups.%s.after: the group order has a cycle: %s", cycle[0], strings.Join(cycle, " → "))
		case done:
			return nil
		}
		state[name] = onPath
		path = append(path, name)
		for _, a := range c.Groups[name].After {
			if err := visit(a); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		state[name] = done
		return nil
	}
	for _, name := range names {
		if err := visit(name); err != nil {
			return err
		}
	}
	return nil
}

// MinReplaceAfter is the least replaceAfter accepted outside a dry run: a rebooting
// node is silent (no Lease renewal, NotReady once the node-monitor grace period of 40
// to 50s has passed) for its whole reboot, and a shorter replaceAfter replaces nodes
// that reboot normally. docs/replacement.md says how to size it.
const MinReplaceAfter = 2 * time.Minute

// minReplaceAfter is MinReplaceAfter, but in test builds (replace_unsafe.go).
var minReplaceAfter = MinReplaceAfter

// checkReplaceAfter refuses a replaceAfter under minReplaceAfter unless dryRun.
func (c *Config) checkReplaceAfter() error {
	if c.Replacement.DryRun {
		return nil
	}
	fields := map[string]Duration{"defaults": c.Defaults.ReplaceAfter}
	for name, g := range c.Groups {
		fields["groups."+name] = g.ReplaceAfter
	}
	for _, field := range sortedKeys(fields) {
		if d := fields[field].Duration; d > 0 && d < minReplaceAfter {
			return fmt.Errorf("%s.replaceAfter: %s is under %s, which would replace nodes that reboot normally (docs/replacement.md); replacement.dryRun allows it", field, d, minReplaceAfter)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Group returns the settings in force for a group: its own, with Defaults filling in
// what it leaves out.
func (c *Config) Group(name string) Group {
	g, d := c.Groups[name], c.Defaults
	if g.Slots == nil {
		g.Slots = d.Slots
	}
	if g.Slots == nil {
		g.Slots = new(1)
	}
	if g.Windows == nil {
		g.Windows = d.Windows
	}
	if g.MinGap.Duration == 0 {
		g.MinGap = d.MinGap
	}
	if g.ReplaceAfter.Duration == 0 {
		g.ReplaceAfter = d.ReplaceAfter
	}
	return g
}

// GroupNames returns "default" and the configured groups, sorted.
func (c *Config) GroupNames() []string {
	names := []string{"default"}
	for name := range c.Groups {
		if name != "default" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Replaces reports whether any group replaces failed nodes.
func (c *Config) Replaces() bool {
	if c.Defaults.ReplaceAfter.Duration > 0 {
		return true
	}
	for _, g := range c.Groups {
		if g.ReplaceAfter.Duration > 0 {
			return true
		}
	}
	return false
}

// WindowOpen reports whether a new reboot of the group may start at t, and the
// group's windows.
func (g Group) WindowOpen(t time.Time) bool {
	if len(g.Windows) == 0 {
		return true
	}
	for i := range g.Windows {
		if g.Windows[i].open(t) {
			return true
		}
	}
	return false
}

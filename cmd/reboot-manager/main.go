// Command reboot-manager is a FleetLock reboot coordinator for Kubernetes: Zincati on
// every node asks it before rebooting into an OS update. See the README for the flags.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/reboot-manager/reboot-manager/access"
	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"

	_ "time/tzdata" // reboot windows name IANA time zones; the image may have no tzdata
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// config is everything the flags and the environment say.
type config struct {
	kubeconfig     string
	listenAddress  string
	metricsAddress string
	pathPrefix     string
	defaultSlots   int
	groupSlots     map[string]int
	configFile     string
	namespace      string
	pauseConfigMap string
	cloud          string
	podName        string
	wait           time.Duration
	staleClaimAge  time.Duration
	drain          evict.Options
	logFormat      string
	logLevel       slog.Level
	showVersion    bool

	// Access control (docs/security.md); all off by default.
	tlsCertFile         string
	tlsKeyFile          string
	basicAuthFile       string
	verifySourceAddress bool
	trustedProxies      []netip.Prefix

	notify notifyConfig // --notify-url (notify.go)
}

// parseConfig reads the flags, with environment overrides where Kubernetes users
// expect them (KUBECONFIG; POD_NAMESPACE and POD_NAME from the downward API).
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	c := config{groupSlots: map[string]int{}}
	fs := flag.NewFlagSet("reboot-manager", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file (default $KUBECONFIG, else the in-cluster configuration)")
	fs.StringVar(&c.listenAddress, "listen-address", ":8080", "address of the FleetLock HTTP server")
	fs.StringVar(&c.metricsAddress, "metrics-address", ":9090", "address serving /metrics, /healthz, /readyz and /status")
	fs.StringVar(&c.pathPrefix, "path-prefix", "", "path the FleetLock routes are served under, e.g. /fleetlock (Zincati's base_url path)")
	fs.IntVar(&c.defaultSlots, "default-slots", 1, "nodes of a group that may reboot at once, for groups without --group-slots")
	fs.Func("group-slots", "GROUP=N: nodes of GROUP that may reboot at once (repeatable)", func(s string) error {
		group, n, ok := strings.Cut(s, "=")
		if !ok || !fleetlock.ValidGroup(group) {
			return fmt.Errorf("want GROUP=N with GROUP matching %s, got %q", fleetlock.GroupPattern, s)
		}
		slots, err := strconv.Atoi(n)
		if err != nil || slots < 0 {
			return fmt.Errorf("want GROUP=N with N a whole number >= 0, got %q", s)
		}
		if _, dup := c.groupSlots[group]; dup {
			return fmt.Errorf("group %q given twice", group)
		}
		c.groupSlots[group] = slots
		return nil
	})
	fs.StringVar(&c.configFile, "config", "", "policy file (YAML): slots, reboot windows and minimum gap per group, health gate, stale holders, blockers (docs/operations.md); reloaded when it changes. Replaces --default-slots and --group-slots")
	fs.StringVar(&c.namespace, "namespace", "", "namespace of the pause ConfigMap (default $POD_NAMESPACE, else reboot-manager)")
	fs.StringVar(&c.pauseConfigMap, "pause-configmap", policy.DefaultPauseConfigMap, "name of the ConfigMap whose existence pauses every new reboot")
	fs.StringVar(&c.cloud, "cloud", "", "replace nodes that fail to return through their cloud's instance group, for groups with replaceAfter in --config: aws (credentials from the SDK's default chain) (docs/replacement.md)")
	fs.DurationVar(&c.wait, "wait", lock.DefaultWait, "how long a pre-reboot request is held open waiting for a slot and for its drain before it answers \"not yet\" (each request a random 3/4 to all of it; Zincati waits 30m)")
	fs.DurationVar(&c.staleClaimAge, "stale-claim-age", lock.DefaultStaleClaimAge, "age after which a claim left by a crashed replica is removed")
	fs.IntVar(&c.drain.Parallelism, "eviction-parallelism", evict.DefaultParallelism, "evictions in flight per drain")
	fs.Float64Var(&c.drain.EvictionsPerSecond, "evictions-per-second", evict.DefaultEvictionsPerSecond, "eviction requests per second, all drains together")
	fs.DurationVar(&c.drain.Timeout, "drain-timeout", evict.DefaultTimeout, "how long a drain may run before --drain-failure-policy acts (not with KeepRefusing)")
	fs.Func("drain-failure-policy", "what a drain does after --drain-timeout: KeepRefusing (default: never give up, never delete), Release (release the lock and uncordon), Force (DELETE the pods evictions could not move)", func(s string) (err error) {
		c.drain.FailurePolicy, err = evict.ParseFailurePolicy(s)
		return err
	})
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "PEM certificate (chain) for the FleetLock server: with --tls-key-file it serves HTTPS; reloaded when the file changes")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "PEM private key of --tls-cert-file")
	fs.StringVar(&c.basicAuthFile, "basic-auth-file", "", "file of GROUP:USER:BCRYPT_HASH:NODE_SELECTOR lines (GROUP * for any group, NODE_SELECTOR a label selector or * for any node): FleetLock requests need HTTP Basic credentials valid for their group and their node; reloaded when it changes")
	fs.BoolVar(&c.verifySourceAddress, "verify-source-address", false, "accept a node's requests only from one of the addresses in its status.addresses")
	fs.Func("trusted-proxies", "comma-separated CIDRs of proxies whose X-Forwarded-For is believed by --verify-source-address (repeatable)", func(s string) error {
		p, err := access.ParseTrustedProxies(s)
		c.trustedProxies = append(c.trustedProxies, p...)
		return err
	})
	fs.StringVar(&c.logFormat, "log-format", "json", "log format: json or text")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	c.notify.flags(fs, getenv)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	slotFlags := false
	fs.Visit(func(f *flag.Flag) { slotFlags = slotFlags || f.Name == "default-slots" || f.Name == "group-slots" })
	if err := c.validate(slotFlags, fs.Args()); err != nil {
		return c, err
	}
	if ns, name := getenv("POD_NAMESPACE"), getenv("POD_NAME"); ns != "" && name != "" {
		c.drain.Self = ns + "/" + name
	}
	c.podName = cmp.Or(getenv("POD_NAME"), "reboot-manager")
	if c.namespace == "" {
		c.namespace = cmp.Or(getenv("POD_NAMESPACE"), "reboot-manager")
	}
	return c, nil
}

// validate checks the flags together; it fills in nothing.
func (c config) validate(slotFlags bool, args []string) error {
	switch {
	case c.cloud != "" && c.cloud != "aws":
		return fmt.Errorf("--cloud must be aws (or unset), got %q", c.cloud)
	case c.configFile != "" && slotFlags:
		return fmt.Errorf("--default-slots and --group-slots go in the --config file (defaults.slots, groups.NAME.slots), not beside it")
	case len(args) > 0:
		return fmt.Errorf("unexpected arguments: %q", args)
	case c.defaultSlots < 0:
		return fmt.Errorf("--default-slots must be >= 0, got %d", c.defaultSlots)
	case c.wait <= 0 || c.wait > 25*time.Minute:
		return fmt.Errorf("--wait must be above 0 and well under Zincati's 30-minute timeout, got %s", c.wait)
	case c.staleClaimAge <= 0:
		return fmt.Errorf("--stale-claim-age must be above 0, got %s", c.staleClaimAge)
	case c.drain.Parallelism <= 0:
		return fmt.Errorf("--eviction-parallelism must be above 0, got %d", c.drain.Parallelism)
	case c.drain.EvictionsPerSecond <= 0:
		return fmt.Errorf("--evictions-per-second must be above 0, got %v", c.drain.EvictionsPerSecond)
	case c.drain.Timeout <= 0:
		return fmt.Errorf("--drain-timeout must be above 0, got %s", c.drain.Timeout)
	case c.logFormat != "json" && c.logFormat != "text":
		return fmt.Errorf("--log-format must be json or text, got %q", c.logFormat)
	case (c.tlsCertFile == "") != (c.tlsKeyFile == ""):
		return fmt.Errorf("--tls-cert-file and --tls-key-file go together: give both or neither")
	case len(c.trustedProxies) > 0 && !c.verifySourceAddress:
		return fmt.Errorf("--trusted-proxies is only used by --verify-source-address, which is off")
	}
	return nil
}

// slotsConfig is the policy that --default-slots and --group-slots describe.
func (c config) slotsConfig() *policy.Config {
	p := &policy.Config{Defaults: policy.Group{Slots: new(c.defaultSlots)}, Groups: map[string]policy.Group{}}
	for g, n := range c.groupSlots {
		p.Groups[g] = policy.Group{Slots: new(n)}
	}
	if err := p.Validate(); err != nil {
		panic(err) // the flags were checked
	}
	return p
}

// routeKlog sends client-go's log lines (klog) through log's handler, tagged
// component=client-go, so that the process writes one stream in one format.
func routeKlog(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}

func (c config) logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// commands are the subcommands beside the server.
var commands = map[string]func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error{
	"status":  statusCommand,
	"release": releaseCommand,
}

func main() {
	if len(os.Args) > 1 && commands[os.Args[1]] != nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		err := commands[os.Args[1]](ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
		stop()
		if err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "reboot-manager "+os.Args[1]+":", err)
			os.Exit(1)
		}
		return
	}
	c, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reboot-manager:", err)
		os.Exit(2)
	}
	if c.showVersion {
		fmt.Printf("reboot-manager %s %s\n", version, runtime.Version())
		return
	}
	log := c.logger(os.Stderr)
	routeKlog(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error("reboot-manager stopped", "err", err)
		os.Exit(1)
	}
}

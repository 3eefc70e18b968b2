// Command reboot-manager is a FleetLock reboot coordinator for Kubernetes: Zincati on
// every node asks it before rebooting into an OS update. `reboot-manager serve` is the
// server, `status` and `release` are for operators; `reboot-manager help` lists the
// commands. See the README for the flags.
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

// parseConfig reads serve's flags, with environment overrides where Kubernetes users
// expect them (KUBECONFIG; POD_NAMESPACE and POD_NAME from the downward API). --help
// writes the usage to help and returns flag.ErrHelp; a flag's mistake is a *usageError.
func parseConfig(args []string, getenv func(string) string, help io.Writer) (config, error) {
	c := config{groupSlots: map[string]int{}}
	fs := flag.NewFlagSet("reboot-manager serve", flag.ContinueOnError)
	fs.StringVar(&c.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file, or files joined as in $KUBECONFIG (default $KUBECONFIG, else the in-cluster configuration)")
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
	fs.StringVar(&c.configFile, "config", "", "policy file (YAML): slots, reboot windows, minimum gap and order (after) per group, health gate, stale holders, blockers (docs/operations.md); reloaded when it changes. Replaces --default-slots and --group-slots")
	fs.StringVar(&c.namespace, "namespace", "", "namespace of the pause ConfigMap, and with --cloud of the replacement records and their Lease (default $POD_NAMESPACE, else reboot-manager)")
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
	if err := parseFlags(fs, args, "reboot-manager serve [flags]: run the FleetLock server", help); err != nil {
		return c, err
	}
	slotFlags := false
	fs.Visit(func(f *flag.Flag) { slotFlags = slotFlags || f.Name == "default-slots" || f.Name == "group-slots" })
	if err := c.validate(slotFlags, fs.Args()); err != nil {
		return c, &usageError{err}
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
		return fmt.Errorf("--wait must be above 0 and at most 25m, under Zincati's 30-minute timeout, got %s", c.wait)
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

// command is a subcommand: reboot-manager NAME [flags] [args].
type command struct {
	name, summary string
	// run runs the command. Its --help prints its usage on stdout and returns
	// flag.ErrHelp; a *usageError is a mistake on the command line (exit 2).
	run func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error
}

// commands lists the subcommands, in the order the usage shows them.
func commands() []command {
	return []command{
		{"serve", "run the FleetLock server (what the Deployment runs)", serveCommand},
		{"status", "print the lock, the policy and what holds reboots back, from the cluster", statusCommand},
		{"release", "release the reboot slot a node holds", releaseCommand},
		{"completion", "print a bash completion script: source <(reboot-manager completion bash)", completionCommand},
		{"version", "print the version", versionCommand},
		{"help", "print this usage, or a command's: reboot-manager help COMMAND", nil},
	}
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a *usageError.
func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// writeUsage writes the usage of the binary: its commands.
func writeUsage(w io.Writer) {
	fmt.Fprint(w, "reboot-manager: a FleetLock reboot coordinator for Kubernetes (Zincati asks it before rebooting)\n\n"+
		"usage: reboot-manager COMMAND [flags] [args]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nreboot-manager help COMMAND (or COMMAND --help) lists the flags of COMMAND.\n")
}

// parseFlags parses args into fs. --help (-h) writes usage and fs's flags to stdout
// and returns flag.ErrHelp; any other mistake is a *usageError.
func parseFlags(fs *flag.FlagSet, args []string, usage string, stdout io.Writer) error {
	fs.SetOutput(io.Discard) // the errors are returned, the usage written below
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "usage: %s\n", usage)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n == 0 {
			fmt.Fprint(stdout, "\nno flags\n")
			return err
		}
		fmt.Fprint(stdout, "\nflags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return err
	}
	if err != nil {
		return &usageError{err}
	}
	return nil
}

// dispatch runs the command line args (without the program name) and returns the
// exit code: 0, 1 when the command failed, 2 for a mistake on the command line.
func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		writeUsage(stdout)
		return 0
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if name != "help" || len(rest) == 0 || rest[0] == "help" {
			writeUsage(stdout)
			return 0
		}
		name, rest = rest[0], []string{"--help"}
	case "-version", "--version":
		name, rest = "version", nil
	}
	if strings.HasPrefix(name, "-") {
		// The command line from before serve: flags only. Still the server, with a
		// warning in its log. A flag mistake names the commands too: whoever typed
		// reboot-manager -v did not ask for serve.
		err := serve(ctx, args, getenv, stdout, stderr, true)
		if usage := (*usageError)(nil); errors.As(err, &usage) {
			fmt.Fprintf(stderr, "reboot-manager: %v\nflags without a command are those of reboot-manager serve (deprecated: put serve first);\n"+
				"run 'reboot-manager help' for the commands, 'reboot-manager help serve' for serve's flags\n", err)
			return 2
		}
		return exitCode(stderr, "serve", err)
	}
	for _, c := range commands() {
		if c.name == name && c.run != nil {
			return exitCode(stderr, name, c.run(ctx, rest, getenv, stdout, stderr))
		}
	}
	fmt.Fprintf(stderr, "reboot-manager: unknown command %q\n\n", name)
	writeUsage(stderr)
	return 2
}

// exitCode writes err, if any, on stderr and returns the exit code for it.
func exitCode(stderr io.Writer, name string, err error) int {
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "reboot-manager %s: %v\nrun 'reboot-manager help %s' for its usage\n", name, err, name)
		return 2
	}
	fmt.Fprintf(stderr, "reboot-manager %s: %v\n", name, err)
	return 1
}

// serveCommand runs the server until ctx ends.
func serveCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return serve(ctx, args, getenv, stdout, stderr, false)
}

// serve runs the server; deprecated says it was started without the serve command.
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, deprecated bool) error {
	c, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	if c.showVersion {
		return versionCommand(ctx, nil, getenv, stdout, stderr)
	}
	log := c.logger(stderr)
	routeKlog(log)
	if deprecated {
		log.Warn("flags without a command are deprecated: run reboot-manager serve with the same flags",
			"use", "reboot-manager serve "+strings.Join(args, " "))
	}
	if err := run(ctx, c, log); err != nil {
		log.Error("reboot-manager stopped", "err", err)
		return errStopped
	}
	return nil
}

// errStopped is serve's error once the server's log has said why it stopped.
var errStopped = errors.New("stopped: see the log above")

// versionCommand prints the version and the Go version it was built with.
func versionCommand(_ context.Context, args []string, _ func(string) string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := parseFlags(fs, args, "reboot-manager version: print the version (also --version)", stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments: %q", fs.Args())
	}
	fmt.Fprintf(stdout, "reboot-manager %s %s\n", version, runtime.Version())
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := dispatch(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

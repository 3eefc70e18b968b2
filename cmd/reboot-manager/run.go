package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"runtime"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/access"
	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/reload"
	"github.com/reboot-manager/reboot-manager/internal/watcherr"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/notify"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
	rmaws "github.com/reboot-manager/reboot-manager/replace/aws"
)

// shutdownGrace bounds how long in-flight requests may take to finish on SIGTERM; held
// requests answer at once ("not yet") when the server stops.
const shutdownGrace = 10 * time.Second

// run serves until ctx ends, then shuts down: it stops taking requests, lets those in
// flight answer, and stops the drains, which the next replica resumes from the state
// recorded on the nodes. It is a build step (every file read, every dependency made,
// every address listened on: a mistake stops here) and then the components, each
// blocking in Start until ctx ends, under one errgroup: the first to fail stops all.
func run(ctx context.Context, c config, log *slog.Logger) error {
	s, err := build(ctx, c, log)
	if err != nil {
		return err
	}
	defer s.close()
	log.Info("reboot-manager started", "version", version,
		"fleetlock", s.fleetLock.Addr(), "metrics", s.metrics.Addr(),
		"config", c.configFile, "wait", c.wait,
		"tls", c.tlsCertFile != "", "basicAuth", c.basicAuthFile != "", "verifySourceAddress", c.verifySourceAddress,
		"trustedProxies", len(c.trustedProxies))
	g, gctx := errgroup.WithContext(ctx)
	for _, comp := range s.components() {
		g.Go(func() error { return comp.Start(gctx) })
	}
	err = g.Wait()
	if ctx.Err() != nil {
		log.Info("shutting down")
	}
	return err
}

// server is what build makes: the dependencies and the components that run them.
type server struct {
	log         *slog.Logger
	pol         *policy.Policy
	drainer     *evict.Drainer
	lock        *lock.Lock
	replacer    *replace.Replacer // nil without --cloud
	notifier    *notify.Notifier  // nil without --notify-url
	fleetLock   *httpServer
	metrics     *httpServer
	broadcaster events.EventBroadcaster
	stopEvents  context.CancelFunc
	// watchErrors are the informers' refusals (403, 401): /readyz names them.
	watchErrors *watcherr.Errors
}

// build reads the files, makes the clients, the policy, the drainer, the lock, the
// replacer and the HTTP servers, and listens on their addresses; it starts nothing
// that runs on its own but the Event broadcaster.
func build(ctx context.Context, c config, log *slog.Logger) (_ *server, err error) {
	// The files first: an invalid one stops here, before anything else starts.
	certs, guardOpts, err := loadAccess(c, log)
	if err != nil {
		return nil, err
	}
	policyConfig, policyState, err := loadPolicy(c, log)
	if err != nil {
		return nil, err
	}
	if c.cloud == "" && policyConfig().Replaces() {
		return nil, errors.New("--config: replaceAfter is set, but no --cloud says how to replace nodes")
	}
	client, err := serverClient(c)
	if err != nil {
		return nil, err
	}
	s := &server{log: log, watchErrors: watcherr.New(log)}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	recorder, err := s.startEvents(ctx, client)
	if err != nil {
		return nil, err
	}
	s.pol = policy.New(policy.Options{
		Config: policyConfig, ConfigState: policyState, Client: client, Namespace: c.namespace, PauseConfigMap: c.pauseConfigMap, Logger: log,
		WatchErrors: s.watchErrors,
	})
	c.drain.Logger = log
	c.drain.Recorder = recorder
	c.drain.WatchErrors = s.watchErrors
	drainOpts := c.drain
	drainOpts.Since = lock.GrantedAt // Timeout counts from the grant, on any replica
	s.drainer = evict.New(client, drainOpts)
	if s.replacer, err = newReplacer(ctx, c, client, policyConfig, recorder, log); err != nil {
		return nil, err
	}
	if s.notifier, err = newNotifier(c.notify, client, log); err != nil {
		return nil, fmt.Errorf("--notify-url: %w", err)
	}
	lockOpts := lock.Options{Policy: s.pol, Wait: c.wait, StaleClaimAge: c.staleClaimAge, Logger: log, Recorder: recorder,
		WatchErrors: s.watchErrors}
	if s.replacer != nil {
		lockOpts.Hooks = s.replacer
	}
	if s.notifier != nil {
		lockOpts.Hooks = s.notifier.Hooks(lockOpts.Hooks) // "told to reboot", "back"
	}
	if s.lock, err = lock.New(client, s.drainer, lockOpts); err != nil {
		return nil, err
	}
	if c.verifySourceAddress {
		guardOpts.Nodes = s.lock
	}
	guard := access.NewGuard(s.lock, guardOpts)
	registry := s.registry(guard)
	handler := fleetlock.NewHandler(guard, fleetlock.Options{PathPrefix: c.pathPrefix, Logger: log, Registerer: registry})
	// A held pre-reboot request may take up to --wait: the write deadline is longer.
	fleetLock := newServer(c.listenAddress, handler, c.wait+time.Minute, log)
	if certs != nil {
		fleetLock.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}
	}
	if s.metrics, err = listen(newServer(c.metricsAddress, s.metricsMux(registry), 30*time.Second, log), log); err != nil {
		return nil, err
	}
	if s.fleetLock, err = listen(fleetLock, log); err != nil {
		return nil, err
	}
	return s, nil
}

// serverClient is the server's clientset, from --kubeconfig or in-cluster.
func serverClient(c config) (kubernetes.Interface, error) {
	restConfig, err := kubeConfig(c.kubeconfig)
	if err != nil {
		return nil, err
	}
	restConfig.UserAgent = "reboot-manager/" + version
	// client-go's default of 5 requests/s throttles the lock when many waiters re-claim
	// a freed slot at once, and the drains' own eviction limit (--evictions-per-second)
	// must not be capped below itself. The API server's priority and fairness still
	// protects it.
	restConfig.QPS, restConfig.Burst = 50, 100
	return kubernetes.NewForConfig(restConfig)
}

// startEvents starts the one Event broadcaster of the drains, the lock and the
// replacer. It posts until close, after every component has stopped.
func (s *server) startEvents(ctx context.Context, client kubernetes.Interface) (events.EventRecorder, error) {
	s.broadcaster = events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	var eventsCtx context.Context
	eventsCtx, s.stopEvents = context.WithCancel(context.WithoutCancel(ctx))
	if err := s.broadcaster.StartRecordingToSinkWithContext(eventsCtx); err != nil {
		return nil, err
	}
	return s.broadcaster.NewRecorder(scheme.Scheme, "reboot-manager"), nil
}

// close stops what build started on its own: the Event broadcaster, and the listeners
// of servers that never served.
func (s *server) close() {
	for _, h := range []*httpServer{s.fleetLock, s.metrics} {
		if h != nil {
			h.ln.Close()
		}
	}
	if s.stopEvents != nil {
		s.stopEvents()
		s.broadcaster.Shutdown()
	}
}

// registry is the one Prometheus registry: the process, the build, and every
// component's metrics.
func (s *server) registry(guard *access.Guard) *prometheus.Registry {
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
		s.lock,
		s.drainer,
		guard,
		s.pol,
	)
	if s.replacer != nil {
		registry.MustRegister(s.replacer)
	}
	if s.notifier != nil {
		registry.MustRegister(s.notifier)
	}
	return registry
}

// metricsMux is the metrics server's handler, with the status page of this replica.
func (s *server) metricsMux(registry *prometheus.Registry) *http.ServeMux {
	return metricsMux(registry, s.lock, s.watchErrors, func() status {
		return buildStatus(statusInput{
			now: time.Now(), source: "server", nodes: s.lock.Nodes(), config: s.pol.Config(), paused: s.pol.Paused,
			drain: func(node string) string {
				if p, ok := s.drainer.Progress(node); ok {
					return p.String()
				}
				return "not started by this replica"
			},
			blockers: s.pol.Blockers(), configState: s.pol.ConfigState(),
		})
	})
}

// loadAccess loads the TLS certificate and the credentials the flags name.
func loadAccess(c config, log *slog.Logger) (*access.CertificateFile, access.Options, error) {
	files := access.ReloadOptions{Logger: log}
	opts := access.Options{TrustedProxies: c.trustedProxies, Logger: log}
	var certs *access.CertificateFile
	if c.tlsCertFile != "" {
		var err error
		if certs, err = access.LoadCertificateFile(c.tlsCertFile, c.tlsKeyFile, files); err != nil {
			return nil, opts, fmt.Errorf("--tls-cert-file, --tls-key-file: %w", err)
		}
	}
	if c.basicAuthFile != "" {
		creds, err := access.LoadCredentialsFile(c.basicAuthFile, files)
		if err != nil {
			return nil, opts, fmt.Errorf("--basic-auth-file: %w", err)
		}
		opts.Credentials = creds
		if certs == nil {
			log.Warn("--basic-auth-file without --tls-cert-file: passwords cross the network in clear text")
		}
	}
	return certs, opts, nil
}

// policyReloadInterval is how often, at most, the --config file is checked for changes.
var policyReloadInterval = 10 * time.Second

// newReplacer returns the replacer of failed nodes that --cloud asks for, or nil.
func newReplacer(ctx context.Context, c config, client kubernetes.Interface, cfg func() *policy.Config,
	recorder events.EventRecorder, log *slog.Logger) (*replace.Replacer, error) {
	if c.cloud == "" {
		return nil, nil
	}
	awsConfig, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("--cloud=aws: %w", err)
	}
	cloud := rmaws.New(autoscaling.NewFromConfig(awsConfig), rmaws.Options{
		AllowGroups: func() []string { return cfg().Replacement.AllowGroups }, Logger: log,
	})
	return replace.New(replace.Options{
		Cloud: cloud, Client: client, Namespace: c.namespace, Identity: c.podName, Config: cfg,
		Recorder: recorder, Logger: log,
	}), nil
}

// loadPolicy returns the policy configuration in force: the --config file's, reloaded
// when it changes (and its state), or the one the slot flags describe (and no state).
func loadPolicy(c config, log *slog.Logger) (func() *policy.Config, func() policy.ConfigState, error) {
	if c.configFile == "" {
		fixed := c.slotsConfig()
		return func() *policy.Config { return fixed }, nil, nil
	}
	f, err := policy.LoadFile(c.configFile, reload.Options{Logger: log, Interval: policyReloadInterval})
	if err != nil {
		return nil, nil, fmt.Errorf("--config: %w", err)
	}
	return f.Config, f.State, nil
}

// metricsMux serves /metrics from registry, /healthz, /readyz from the informers'
// refusals (a missing RBAC permission, named) and the lock's health, and /status
// (JSON) for humans.
func metricsMux(registry *prometheus.Registry, lk *lock.Lock, refusals *watcherr.Errors, current func() status) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		if !lk.HasSynced() {
			http.Error(w, cmp.Or(refusals.Err(), errors.New("node cache not synced")).Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = current().writeJSON(w)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := cmp.Or(refusals.Err(), lk.Healthy()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// newServer returns an HTTP server hardened against slow and oversized clients.
func newServer(addr string, h http.Handler, writeTimeout time.Duration, log *slog.Logger) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// kubeConfig loads the kubeconfig files path lists (one, or several joined as in
// $KUBECONFIG, merged as kubectl merges them: missing files skipped unless none is
// left), else the in-cluster config.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(path)}
		if len(rules.Precedence) == 1 {
			rules = &clientcmd.ClientConfigLoadingRules{ExplicitPath: path} // a missing file is an error
		}
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig or KUBECONFIG, and not in a cluster: %w", err)
	}
	return cfg, nil
}

func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rebootmanager_build_info",
		Help: "Always 1; the labels tell the version and the Go version it was built with.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return g
}

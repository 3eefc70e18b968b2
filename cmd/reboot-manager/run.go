package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/reboot-manager/reboot-manager/access"
	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/reload"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
	rmaws "github.com/reboot-manager/reboot-manager/replace/aws"
)

// shutdownGrace bounds how long in-flight requests may take to finish on SIGTERM; held
// requests answer at once ("not yet") when the server stops.
const shutdownGrace = 10 * time.Second

// run serves until ctx ends, then shuts down: it stops taking requests, lets those in
// flight answer, and stops the drains, which the next replica resumes from the state
// recorded on the nodes.
func run(ctx context.Context, c config, log *slog.Logger) error {
	// The files first: an invalid one stops here, before anything else starts.
	certs, guardOpts, err := loadAccess(c, log)
	if err != nil {
		return err
	}
	policyConfig, policyState, err := loadPolicy(c, log)
	if err != nil {
		return err
	}
	if c.cloud == "" && policyConfig().Replaces() {
		return errors.New("--config: replaceAfter is set, but no --cloud says how to replace nodes")
	}

	restConfig, err := kubeConfig(c.kubeconfig)
	if err != nil {
		return err
	}
	restConfig.UserAgent = "reboot-manager/" + version
	// client-go's default of 5 requests/s throttles the lock when many waiters re-claim
	// a freed slot at once, and the drains' own eviction limit (--evictions-per-second)
	// must not be capped below itself. The API server's priority and fairness still
	// protects it.
	restConfig.QPS, restConfig.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	// One Event recorder for the drains and the lock.
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	eventsCtx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEvents()
	if err := broadcaster.StartRecordingToSinkWithContext(eventsCtx); err != nil {
		return err
	}
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, "reboot-manager")

	pol := policy.New(policy.Options{
		Config: policyConfig, ConfigState: policyState, Client: client, Namespace: c.namespace, PauseConfigMap: c.pauseConfigMap, Logger: log,
	})

	c.drain.Logger = log
	c.drain.Recorder = recorder
	drainer := evict.New(client, c.drain)
	drainCtx, stopDrains := context.WithCancel(context.WithoutCancel(ctx))
	var drainsDone sync.WaitGroup
	drainsDone.Go(func() { drainer.Run(drainCtx) })
	defer func() {
		stopDrains()
		drainsDone.Wait()
	}()

	replacer, err := newReplacer(ctx, c, client, policyConfig, recorder, log)
	if err != nil {
		return err
	}
	notifier, err := newNotifier(c.notify, client, log)
	if err != nil {
		return fmt.Errorf("--notify-url: %w", err)
	}
	lockOpts := lock.Options{
		Slots: pol.Slots, Wait: c.wait, StaleClaimAge: c.staleClaimAge, Logger: log,
		Gate: pol, ReleaseWhenReady: pol.ReleaseWhenReady, StaleHolderAfter: pol.StaleHolderAfter,
		Recorder: recorder,
	}
	if replacer != nil {
		lockOpts.BeforeReboot = replacer.BeforeReboot
	}
	lk, err := lock.New(client, drainer, lockOpts)
	if err != nil {
		return err
	}

	if c.verifySourceAddress {
		guardOpts.Nodes = lk
	}
	guard := access.NewGuard(lk, guardOpts)

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
		lk,
		drainer,
		guard,
		pol,
	)
	if replacer != nil {
		registry.MustRegister(replacer)
	}
	if notifier != nil {
		registry.MustRegister(notifier)
	}

	metrics := metricsMux(registry, lk, func() status {
		return buildStatus(statusInput{
			now: time.Now(), source: "server", nodes: lk.Nodes(), config: pol.Config(), paused: pol.Paused,
			drain: func(node string) string {
				if p, ok := drainer.Progress(node); ok {
					return p.String()
				}
				return "not started by this replica"
			},
			blockers: pol.Blockers(), configState: pol.ConfigState(),
		})
	})

	handler := fleetlock.NewHandler(guard, fleetlock.Options{PathPrefix: c.pathPrefix, Logger: log, Registerer: registry})
	// A held pre-reboot request may take up to --wait: the write deadline is longer.
	fleetLockServer := newServer(c.listenAddress, handler, c.wait+time.Minute, log)
	if certs != nil {
		fleetLockServer.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}
	}
	servers := []*http.Server{newServer(c.metricsAddress, metrics, 30*time.Second, log), fleetLockServer}
	serveErr := make(chan error, len(servers))
	var listeners []net.Listener
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("listen on %s: %w", s.Addr, err)
		}
		listeners = append(listeners, ln)
	}
	for i, s := range servers {
		go func() {
			if s.TLSConfig != nil {
				serveErr <- s.ServeTLS(listeners[i], "", "") // the certificate comes from GetCertificate
				return
			}
			serveErr <- s.Serve(listeners[i])
		}()
	}
	log.Info("reboot-manager started", "version", version,
		"fleetlock", listeners[1].Addr().String(), "metrics", listeners[0].Addr().String(),
		"config", c.configFile, "wait", c.wait,
		"tls", certs != nil, "basicAuth", c.basicAuthFile != "", "verifySourceAddress", c.verifySourceAddress,
		"trustedProxies", len(c.trustedProxies))

	lockCtx, stopLock := context.WithCancel(ctx)
	defer stopLock()
	for _, start := range []func(context.Context) error{pol.Start, lk.Start} {
		if err := start(lockCtx); err != nil {
			if ctx.Err() != nil {
				err = nil // told to stop while starting: not a failure
			}
			return shutdown(servers, err, log)
		}
	}
	log.Info("node cache synced; serving FleetLock requests")
	if replacer != nil {
		go replacer.Run(lockCtx)
	}
	if notifier != nil {
		go func() {
			if err := notifier.Start(lockCtx); err != nil {
				log.Error("notifications stopped", "err", err)
			}
		}()
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return shutdown(servers, nil, log)
	case err := <-serveErr:
		return shutdown(servers, err, log)
	}
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

// metricsMux serves /metrics from registry, /healthz, /readyz from the lock's health,
// and /status (JSON) for humans.
func metricsMux(registry *prometheus.Registry, lk *lock.Lock, current func() status) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		if !lk.HasSynced() {
			http.Error(w, "node cache not synced", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = current().writeJSON(w)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := lk.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// shutdown stops the servers, letting in-flight requests finish, and returns cause.
func shutdown(servers []*http.Server, cause error, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	for _, s := range servers {
		if err := s.Shutdown(ctx); err != nil {
			log.Warn("server did not shut down cleanly", "addr", s.Addr, "err", err)
		}
	}
	if errors.Is(cause, http.ErrServerClosed) {
		return nil
	}
	return cause
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

// kubeConfig loads a kubeconfig file when one is named, else the in-cluster config.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
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

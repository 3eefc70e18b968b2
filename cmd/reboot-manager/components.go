package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"k8s.io/client-go/tools/cache"
)

// component is one part of the server. Start runs it until ctx ends (it blocks, as
// controller-runtime's Runnable does) and returns nil then; an error stops the others.
type component interface {
	Start(ctx context.Context) error
}

// componentFunc is a function that is a component.
type componentFunc func(ctx context.Context) error

// Start calls f.
func (f componentFunc) Start(ctx context.Context) error { return f(ctx) }

// components are the server's parts: the drains, the policy and the lock (in that
// order: the pause ConfigMap is known before the first request is answered), the
// replacer once the node cache has synced, and the two HTTP servers.
func (s *server) components() []component {
	cs := []component{
		componentFunc(func(ctx context.Context) error {
			s.drainer.Run(ctx)
			return nil
		}),
		componentFunc(s.startLock),
		s.metrics,
		s.fleetLock,
	}
	if s.replacer != nil {
		cs = append(cs, componentFunc(func(ctx context.Context) error {
			if cache.WaitForCacheSync(ctx.Done(), s.lock.HasSynced) {
				s.replacer.Run(ctx)
			}
			return nil
		}))
	}
	return cs
}

// startLock starts the policy, then the lock, and blocks until ctx ends.
func (s *server) startLock(ctx context.Context) error {
	for _, start := range []func(context.Context) error{s.pol.Start, s.lock.Start} {
		if err := start(ctx); err != nil {
			if ctx.Err() != nil {
				return nil //nolint:nilerr // told to stop while starting: not a failure
			}
			return err
		}
	}
	s.log.Info("node cache synced; serving FleetLock requests")
	<-ctx.Done()
	return nil
}

// httpServer is an HTTP server as a component, listening since build.
type httpServer struct {
	*http.Server
	ln  net.Listener
	log *slog.Logger
}

// listen listens on the server's address.
func listen(s *http.Server, log *slog.Logger) (*httpServer, error) {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.Addr, err)
	}
	return &httpServer{Server: s, ln: ln, log: log}, nil
}

// Addr is the address listened on.
func (h *httpServer) Addr() string { return h.ln.Addr().String() }

// Start serves until ctx ends, then shuts down, letting in-flight requests finish
// within shutdownGrace.
func (h *httpServer) Start(ctx context.Context) error {
	served := make(chan error, 1)
	go func() {
		if h.TLSConfig != nil {
			served <- h.ServeTLS(h.ln, "", "") // the certificate comes from GetCertificate
			return
		}
		served <- h.Serve(h.ln)
	}()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := h.Shutdown(sctx); err != nil {
		h.log.Warn("server did not shut down cleanly", "addr", h.Server.Addr, "err", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

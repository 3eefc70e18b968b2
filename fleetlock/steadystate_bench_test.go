package fleetlock_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/access"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// benchID and benchBody are a node's Zincati ID and its steady-state body, byte for
// byte what Zincati sends.
const (
	benchID   = "978a225b3d7b40e9acd7ce9b62f68444"
	benchBody = "{\n  \"client_params\": {\n    \"id\": \"" + benchID + "\",\n    \"group\": \"default\"\n  }\n}"
)

// idleLocker answers as *lock.Lock does for a node that holds nothing: it resolves
// the ID from a map (the lock's cache index) and releases nothing.
type idleLocker struct{ nodes map[string]*corev1.Node }

func (l idleLocker) Resolve(id string) (*corev1.Node, error) {
	if n, ok := l.nodes[id]; ok {
		return n, nil
	}
	return nil, fleetlock.ErrUnknownNode
}

func (l idleLocker) PreReboot(context.Context, fleetlock.ClientParams) error {
	return fleetlock.ErrLockHeld
}

func (l idleLocker) SteadyState(_ context.Context, p fleetlock.ClientParams) (bool, error) {
	_, err := l.Resolve(p.ID)
	return false, err
}

// discardWriter is a ResponseWriter that keeps nothing but the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// BenchmarkSteadyStateIdle is the no-op steady-state of a node that holds nothing,
// through the handler chain cmd/reboot-manager builds (fleetlock.NewHandler with
// metrics and an info-level logger, over access.Guard with the lock as its resolver),
// without the HTTP server: what the server adds to a server that does nothing.
func BenchmarkSteadyStateIdle(b *testing.B) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Annotations: map[string]string{}}}
	l := idleLocker{nodes: map[string]*corev1.Node{benchID: node}}
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := fleetlock.NewHandler(access.NewGuard(l, access.Options{Logger: log}),
		fleetlock.Options{Logger: log, Registerer: prometheus.NewRegistry()})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		body := bytes.NewReader(nil)
		r, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:9000/v1/steady-state", body)
		if err != nil {
			b.Error(err)
			return
		}
		r.RemoteAddr = "127.0.0.1:40000"
		r.Header.Set("fleet-lock-protocol", "true")
		r.Header.Set("Content-Type", "application/json")
		w := &discardWriter{}
		for pb.Next() {
			body.Reset([]byte(benchBody))
			r.Body = io.NopCloser(body)
			w.h = http.Header{}
			h.ServeHTTP(w, r)
			if w.status != http.StatusOK {
				b.Errorf("status %d", w.status)
				return
			}
		}
	})
}

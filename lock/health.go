package lock

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// healthInterval is how often the API server's /readyz is probed.
const healthInterval = 2 * time.Second

// probe asks the API server's /readyz every healthInterval until ctx ends. While it
// fails, requests are refused with api_unavailable: the cache they would be answered
// from may be stale, and no write could be made anyway.
func (l *Lock) probe(ctx context.Context) {
	wait.UntilWithContext(ctx, l.probeOnce, healthInterval)
}

func (l *Lock) probeOnce(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, healthInterval)
	defer cancel()
	err := l.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
	if ctx.Err() != nil {
		return
	}
	switch was := l.apiErr.Swap(&err); {
	case err != nil && (was == nil || *was == nil):
		l.log.Warn("API server unreachable: refusing requests", "err", err)
	case err == nil && was != nil && *was != nil:
		l.log.Info("API server reachable again")
	}
}

// Healthy returns nil while the node cache is synced and the API server answers.
func (l *Lock) Healthy() error {
	if !l.HasSynced() {
		return errors.New("node cache not synced")
	}
	return l.apiDown()
}

// apiDown returns an *APIError while the last health probe failed.
func (l *Lock) apiDown() error {
	if p := l.apiErr.Load(); p != nil && *p != nil {
		return apiError("API server health", *p)
	}
	return nil
}

// HasSynced reports whether the node cache is filled and the lock's event handlers
// have seen all of it (Zincati IDs resolve); requests fail until it is.
func (l *Lock) HasSynced() bool {
	if l.synced.Load() {
		return true
	}
	if l.nodes.HasSynced() && l.handled.HasSynced() {
		l.synced.Store(true)
		return true
	}
	return false
}

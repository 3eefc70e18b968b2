package lock

import (
	"context"
	"errors"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// errExpired ends a wait whose request has waited long enough.
var errExpired = errors.New("request expired")

// signal wakes every waiter when the lock state of some node changes.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSignal() signal { return signal{ch: make(chan struct{})} }

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.ch)
	s.ch = make(chan struct{})
}

// sleep waits until wake or wake2 is signalled (a nil channel never is) or about
// every passes (0: never; up to 50% more, at random), and fails when deadline passes
// or ctx ends.
func (l *Lock) sleep(ctx context.Context, every time.Duration, deadline time.Time, wake, wake2 <-chan struct{}) error {
	left := time.Until(deadline)
	if left <= 0 {
		return errExpired
	}
	d := left
	if every > 0 {
		d = min(wait.Jitter(every, 0.5), left)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return apiError("request", ctx.Err())
	case <-l.stopping:
		return errExpired // shutting down: answer "not yet" now
	case <-wake:
	case <-wake2:
	case <-t.C:
	}
	return nil
}

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

// signal wakes every waiter when it fires. The zero value is ready; a channel exists
// only while someone waits, so that firing with no waiter costs nothing.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next fire.
func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// signals are signals by key (a node name, a group): firing one key wakes only the
// waiters of that key. The zero value is ready; a key has a channel only while
// someone waits on it.
type signals struct {
	mu  sync.Mutex
	chs map[string]chan struct{}
}

// wait returns a channel closed at the next fire of key.
func (s *signals) wait(key string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.chs[key]
	if ch == nil {
		if s.chs == nil {
			s.chs = map[string]chan struct{}{}
		}
		ch = make(chan struct{})
		s.chs[key] = ch
	}
	return ch
}

func (s *signals) fire(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.chs[key]; ch != nil {
		close(ch)
		delete(s.chs, key)
	}
}

// fallbackTimers, cleared by tests, turns off sleep's timers (not poll's): a wait
// then ends only on its wake channels, its deadline or its context, so that a test
// that sees an answer knows the event woke it.
var fallbackTimers = true

// sleep waits until wake or wake2 is signalled (a nil channel never is) or about
// every passes (0: never; up to 50% more, at random): a fallback in case an event was
// missed. It fails when deadline passes or ctx ends.
func (l *Lock) sleep(ctx context.Context, every time.Duration, deadline time.Time, wake, wake2 <-chan struct{}) error {
	if !fallbackTimers {
		every = 0
	}
	return l.poll(ctx, every, deadline, wake, wake2)
}

// poll is sleep for a wait that must look again about every period whatever the
// events (the health gate reads a Lease, which no event announces).
func (l *Lock) poll(ctx context.Context, every time.Duration, deadline time.Time, wake, wake2 <-chan struct{}) error {
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

package fleetlock

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the bounds on held requests.
const (
	// DefaultMaxRequestsPerNode is Options.MaxRequestsPerNode's default.
	DefaultMaxRequestsPerNode = 64
	// DefaultMaxRequestsPerConnection is Options.MaxRequestsPerConnection's default.
	DefaultMaxRequestsPerConnection = 100
)

// shareKey identifies requests that are one piece of work: the same endpoint, the
// same body, and the same Peer but for the TCP port (the Locker, and the access
// checks in it, cannot tell such requests apart).
type shareKey struct {
	endpoint string
	params   ClientParams
	peer     Peer
}

// sharedCall is one Locker call and the requests waiting for its answer.
type sharedCall struct {
	key      shareKey
	ctx      context.Context // the call's
	fn       func(context.Context) (bool, error)
	done     chan struct{} // closed when released and err are set
	released bool
	err      error
	waiters  int                // requests still waiting, under sharer.mu
	cancel   context.CancelFunc // ends the call's context: every waiter left
}

// Idle workers: a goroutine that made a call waits this long for the next one before
// it ends, and at most maxIdleWorkers wait. A call made on a fresh goroutine grows its
// stack (the Locker's frames do not fit in a new goroutine's) on every request;
// a worker grows it once.
const (
	workerIdle     = 10 * time.Second
	maxIdleWorkers = 64
)

// sharer runs one Locker call at a time per shareKey and gives its answer to every
// request that asked while it ran; it bounds the requests held per node ID and per
// HTTP/2 connection.
type sharer struct {
	maxPerNode, maxPerConn int

	mu      sync.Mutex
	calls   map[shareKey]*sharedCall
	perNode map[string]int // requests held, by client ID
	perConn map[string]int // HTTP/2 requests held, by connection (remote address)

	ready chan *sharedCall // to an idle worker
	idle  atomic.Int32     // workers waiting on ready
}

func newSharer(perNode, perConn int) *sharer {
	return &sharer{maxPerNode: perNode, maxPerConn: perConn,
		calls: map[shareKey]*sharedCall{}, perNode: map[string]int{}, perConn: map[string]int{},
		ready: make(chan *sharedCall)}
}

// do answers the request with fn's answer, calling fn only if no identical request
// is being answered; conn names the request's HTTP/2 connection ("" for HTTP/1,
// whose connections carry one request at a time). fn runs with a context that
// carries ctx's values, is not ended by ctx alone, and ends when every request
// waiting for it has ended. A request past the bounds gets an error matching
// ErrTooManyRequests at once.
func (s *sharer) do(ctx context.Context, endpoint string, p ClientParams, conn string, fn func(context.Context) (bool, error)) (bool, error) {
	peer, _ := PeerFrom(ctx)
	if host, _, err := net.SplitHostPort(peer.RemoteAddr); err == nil {
		peer.RemoteAddr = host
	}
	key := shareKey{endpoint: endpoint, params: p, peer: peer}

	s.mu.Lock()
	if s.perNode[p.ID] >= s.maxPerNode {
		s.mu.Unlock()
		return false, fmt.Errorf("%d requests for this ID are already waiting: %w", s.maxPerNode, ErrTooManyRequests)
	}
	if conn != "" && s.perConn[conn] >= s.maxPerConn {
		s.mu.Unlock()
		return false, fmt.Errorf("%d requests of this HTTP/2 connection are already waiting: %w", s.maxPerConn, ErrTooManyRequests)
	}
	s.perNode[p.ID]++
	if conn != "" {
		s.perConn[conn]++
	}
	c := s.calls[key]
	if c == nil {
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &sharedCall{key: key, ctx: cctx, fn: fn, done: make(chan struct{}), cancel: cancel}
		s.calls[key] = c
		s.start(c)
	}
	c.waiters++
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.perNode[p.ID]--; s.perNode[p.ID] == 0 {
			delete(s.perNode, p.ID)
		}
		if conn != "" {
			if s.perConn[conn]--; s.perConn[conn] == 0 {
				delete(s.perConn, conn)
			}
		}
		if c.waiters--; c.waiters == 0 {
			c.cancel() // nobody waits for the answer any more
		}
	}()
	select {
	case <-c.done:
		return c.released, c.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// start runs c on an idle worker, or on a new one if none waits.
func (s *sharer) start(c *sharedCall) {
	select {
	case s.ready <- c:
	default:
		go s.work(c)
	}
}

// work runs c, then the calls it is given until it has waited workerIdle for one,
// or finds maxIdleWorkers waiting already.
func (s *sharer) work(c *sharedCall) {
	// The timer is reset when it fires, not for every call: resetting costs more
	// than reading the clock.
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		s.run(c)
		last := time.Now()
		if s.idle.Add(1) > maxIdleWorkers {
			s.idle.Add(-1)
			return
		}
	wait:
		select {
		case c = <-s.ready:
			s.idle.Add(-1)
		case <-t.C:
			if d := time.Since(last); d < workerIdle {
				t.Reset(workerIdle - d)
				goto wait
			}
			s.idle.Add(-1)
			return
		}
	}
}

// run calls c's fn and publishes its answer. The call leaves the table before its
// answer is published, so that a request arriving afterwards starts a fresh call.
func (s *sharer) run(c *sharedCall) {
	var released bool
	err := recovered(func() (err error) {
		released, err = c.fn(c.ctx)
		return err
	})
	s.mu.Lock()
	delete(s.calls, c.key)
	s.mu.Unlock()
	c.released, c.err = released, err
	c.fn, c.ctx = nil, nil
	close(c.done)
	c.cancel()
}

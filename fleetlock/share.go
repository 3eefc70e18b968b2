package fleetlock

import (
	"context"
	"fmt"
	"net"
	"sync"
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
	done     chan struct{} // closed when released and err are set
	released bool
	err      error
	waiters  int                // requests still waiting, under sharer.mu
	cancel   context.CancelFunc // ends the call's context: every waiter left
}

// sharer runs one Locker call at a time per shareKey and gives its answer to every
// request that asked while it ran; it bounds the requests held per node ID and per
// HTTP/2 connection.
type sharer struct {
	maxPerNode, maxPerConn int

	mu      sync.Mutex
	calls   map[shareKey]*sharedCall
	perNode map[string]int // requests held, by client ID
	perConn map[string]int // HTTP/2 requests held, by connection (remote address)
}

func newSharer(perNode, perConn int) *sharer {
	return &sharer{maxPerNode: perNode, maxPerConn: perConn,
		calls: map[shareKey]*sharedCall{}, perNode: map[string]int{}, perConn: map[string]int{}}
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
		c = &sharedCall{done: make(chan struct{}), cancel: cancel}
		s.calls[key] = c
		go s.run(cctx, key, c, fn)
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

// run calls fn and publishes its answer. The call leaves the table before its answer
// is published, so that a request arriving afterwards starts a fresh call.
func (s *sharer) run(ctx context.Context, key shareKey, c *sharedCall, fn func(context.Context) (bool, error)) {
	var released bool
	err := recovered(func() (err error) {
		released, err = fn(ctx)
		return err
	})
	s.mu.Lock()
	delete(s.calls, key)
	s.mu.Unlock()
	c.released, c.err = released, err
	close(c.done)
	c.cancel()
}

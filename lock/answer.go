package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// awaitDrain starts or resumes the holder's drain and waits for it to finish.
func (a *acquisition) awaitDrain(ctx context.Context, n *corev1.Node) error {
	l := a.lock
	if grantBeforeDrain {
		l.drainer.Start(n)
		return nil
	}
	for {
		if c, ok := a.cached(); ok {
			n = c
		}
		p := l.drainer.Start(n)
		switch {
		case p.Drained:
			return a.allow(ctx)
		case p.Failed:
			// The drain gave up under the "release" failure policy: give the slot back
			// and undo our cordon, so that the node serves again and the group moves on.
			n, err := l.get(ctx, a.name)
			if err == nil {
				err = l.release(ctx, n, a.log, releaseDrainFailed)
			}
			if err != nil && !errors.Is(err, ErrNotHolder) {
				return err
			}
			return &DrainError{Progress: p}
		}
		// The drain's end and any lock change wake us; the timer is a fallback.
		if err := l.sleep(ctx, 5*time.Second, a.expires, p.Done, l.changed.wait()); err != nil {
			return orDrain(err, p)
		}
		if n, ok := a.cached(); ok && lockOf(n).State != StateRebooting {
			// Released while draining (an operator?): confirm, then stop.
			if _, err := a.stillHolding(ctx); err != nil {
				return err
			}
		}
	}
}

// cached returns the node as the cache shows it.
func (a *acquisition) cached() (*corev1.Node, bool) {
	obj, ok, err := a.lock.nodes.GetIndexer().GetByKey(a.name)
	if err != nil || !ok {
		return nil, false
	}
	return obj.(*corev1.Node), true
}

// stillHolding reads the node from the API server and returns an error matching
// fleetlock.ErrLockHeld if it no longer holds the lock (an operator released it).
func (a *acquisition) stillHolding(ctx context.Context) (*corev1.Node, error) {
	n, err := a.lock.get(ctx, a.name)
	if err != nil {
		return nil, err
	}
	if lockOf(n).State != StateRebooting {
		a.lock.drainer.Forget(a.name)
		return nil, fmt.Errorf("node %s: reboot lock released while it drained: %w", a.name, fleetlock.ErrLockHeld)
	}
	return n, nil
}

// allow makes sure, with a read from the API server, that the node still holds the
// lock (an operator may have released it while it drained), and runs the ToldToReboot
// hook, before telling it to reboot. With the API server unreachable, nothing is
// allowed.
func (a *acquisition) allow(ctx context.Context) error {
	n, err := a.stillHolding(ctx)
	if err != nil {
		return err
	}
	if err := a.lock.opts.Hooks.ToldToReboot(ctx, n, grantOf(n), a.lock.opts.Clock.Now()); err != nil {
		return apiError("before reboot", err)
	}
	a.log.Info("reboot allowed: node drained")
	return nil
}

// orDrain turns an expired wait for the drain into the *DrainError that says where it
// stands.
func orDrain(err error, p evict.Progress) error {
	if errors.Is(err, errExpired) {
		return &DrainError{Progress: p}
	}
	return err
}

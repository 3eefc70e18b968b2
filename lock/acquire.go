package lock

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// acquisition is one pre-reboot request's work for one node: claim, check, promote
// (or withdraw and wait), then wait for the drain (answer.go).
type acquisition struct {
	lock        *Lock
	name, group string
	log         *slog.Logger
	expires     time.Time // when the request stops waiting for a slot or its drain
	tieExpires  time.Time // when it stops waiting for later claimants to withdraw

	claim      *corev1.Node // the node as our claim left it; nil while we hold no claim
	contending bool         // counted in Lock.contenders
	// reservedUntil is set when the acquisition is a reservation (reserve.go), not
	// a request: the deadline its promotion writes.
	reservedUntil time.Time
}

// tieWait is the least time a request waits for later claimants to withdraw, whatever
// Options.Wait says: they do so within a few API round trips.
const tieWait = 5 * time.Second

// testHookAfterCheck, set by tests, runs between the check and what follows it, to
// widen the window in which concurrent requests interleave.
var testHookAfterCheck func(node string)

// run drives the node from wherever it is to "holder and drained", or until the
// request expires. Whatever happens, it leaves no claim of its own behind: a claim
// lives only while a request works on it.
func (a *acquisition) run(ctx context.Context, n *corev1.Node) (err error) {
	// A node that waits says so on its Node, at the request's start and at its end.
	until := a.lock.opts.Clock.Now().Add(time.Until(a.expires))
	var marked bool
	if n, marked = a.markWaiting(ctx, n, until); marked {
		defer func() {
			if err != nil {
				a.endRequest(context.WithoutCancel(ctx), until)
			}
		}()
	}
	a.contend(true)
	defer func() {
		if a.claim != nil {
			a.withdraw(context.WithoutCancel(ctx))
		}
		a.contend(false)
	}()
	cached := true          // n is the cache's; every node read or written below is fresh
	uid := n.UID            // the Node object of the machine that asked
	for conflicts := 0; ; { // conflicts in a row
		if n.UID != uid {
			// Deleted, and a Node of the same name joined since (perhaps another
			// machine): nothing here is its request's to claim, cordon or drain.
			a.log.Info("node replaced while its request waited: the request ends", "uid", uid, "newUID", n.UID)
			return fmt.Errorf("node %s (uid %s) was deleted while its request waited for a slot: %w", a.name, uid, fleetlock.ErrNodeGone)
		}
		if lockOf(n).State == StateRebooting {
			if cached { // the cache may not show a release yet: read the node
				fresh, err := a.lock.client.CoreV1().Nodes().Get(ctx, a.name, metav1.GetOptions{})
				switch {
				case err == nil:
					n, cached = fresh, false
					continue
				case !apierrors.IsNotFound(err):
					return apiError("get node", err)
				} // gone: awaitDrain says so (node_gone)
			}
			if _, reserved := n.Annotations[AnnotationReservedUntil]; reserved && !cached {
				// Its slot was reserved for it: take it, unless the give-back wins.
				taken, err := a.takeReservation(ctx, n)
				if apierrors.IsConflict(err) && conflicts < maxConflicts {
					conflicts++
					if n, err = a.lock.get(ctx, a.name); err != nil {
						return err
					}
					continue
				}
				if err != nil {
					return apiError("take the reserved slot", err)
				}
				n = taken
			}
			a.contend(false)
			return a.awaitDrain(ctx, n)
		}
		if err := a.lock.apiDown(); err != nil {
			return err
		}
		if a.claim == nil {
			if err := a.admit(n); err != nil {
				return err
			}
			if err := a.drainGaveUp(ctx, n); err != nil {
				return err
			}
		}
		if a.claim == nil || a.claimAging() {
			// Not cut by the request's context: a claim the API server applied while
			// the client gave up would be known to nobody, and stand until it is stale.
			claimed, err := a.write(context.WithoutCancel(ctx), n, write{state: StateClaiming, group: a.group})
			if apierrors.IsConflict(err) && conflicts < maxConflicts {
				conflicts++
				a.claim = nil
				if n, err = a.lock.get(ctx, a.name); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return apiError("claim lock", err)
			}
			a.claim, n, conflicts = claimed, claimed, 0
			a.log.Debug("reboot lock claimed")
		}
		var err error
		if n, err = a.step(ctx, n); err != nil {
			return err
		}
	}
}

// step checks our claim and acts on the verdict: promote, wait for later claimants,
// or withdraw and wait for a free slot. It returns the node as last seen.
func (a *acquisition) step(ctx context.Context, n *corev1.Node) (*corev1.Node, error) {
	v, held, err := a.check(ctx)
	if err != nil {
		return nil, err
	}
	if testHookAfterCheck != nil {
		testHookAfterCheck(a.name)
	}
	switch v {
	case promote:
		if err := a.admit(n); err != nil {
			return nil, err // the deferred withdrawal removes our claim
		}
		if err := a.lock.orderFresh(ctx, a.group); err != nil {
			return nil, err // on a fresh read, the last check before the promotion
		}
		return a.promote(ctx)
	case awaitLater:
		if err := a.lock.sleep(ctx, 200*time.Millisecond, a.tieExpires, a.lock.groupChanged.wait(a.group), nil); err != nil {
			return nil, orHeld(err, held)
		}
		return n, nil
	default: // withdraw
		// Not the request's context: a request cut now still removes its claim,
		// which would otherwise stall later names until it goes stale.
		if n = a.withdraw(context.WithoutCancel(ctx)); n == nil {
			if n, err = a.lock.get(ctx, a.name); err != nil {
				return nil, err
			}
		}
		if err := a.awaitFreeSlot(ctx); err != nil {
			return nil, orHeld(err, held)
		}
		if c, ok := a.lock.cachedNode(a.name); ok && lockOf(c).State == StateRebooting {
			return c, nil // our node holds (awaitFreeSlot): the holder's path reads it
		}
		return n, nil
	}
}

// check lists, with a consistent read from the API server (never the cache), the
// nodes that claim or hold the lock, removes stale claims, and decides. It runs only
// after our claim was written: that order is what makes the lock safe (see doc.go).
func (a *acquisition) check(ctx context.Context) (verdict, *HeldError, error) {
	list, err := a.lock.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LabelLock + "=true"})
	if err != nil {
		return 0, nil, apiError("list lock holders", err)
	}
	others := make(map[string]nodeLock, len(list.Items))
	for i := range list.Items {
		n := &list.Items[i]
		st := lockOf(n)
		if n.Name == a.name || st.Group != a.group || a.isStale(st) && a.removeStaleClaim(ctx, n) {
			continue
		}
		others[n.Name] = st
	}
	v, held := decide(a.name, a.group, a.lock.slots(a.group), others)
	return v, held, nil
}

// promote turns our claim into a hold and cordons the node, in one write conditioned
// on the claim: if anything touched the node since (a stale-claim cleaner removed the
// claim), the write fails with 409 and the request claims and checks again.
func (a *acquisition) promote(ctx context.Context) (*corev1.Node, error) {
	c := a.claim
	// A cordon that an earlier hold of ours left behind (released by hand, by
	// overwriting the status annotation) is ours, not the operator's.
	wasUnsched := c.Spec.Unschedulable && c.Annotations[AnnotationWasUnschedulable] != "false"
	n, err := a.write(ctx, c, write{
		state:         StateRebooting,
		group:         a.group,
		bootID:        c.Status.NodeInfo.BootID,
		wasUnsched:    new(wasUnsched),
		unschedulable: new(true),
		setAutoscaler: autoscalerKeysToSet(c),
		reservedUntil: a.reservedUntil,
	})
	if apierrors.IsConflict(err) {
		a.claim = nil
		return a.lock.get(ctx, a.name)
	}
	if err != nil {
		return nil, apiError("promote claim", err)
	}
	a.claim = nil
	a.log.Info("reboot lock granted", "wasUnschedulable", wasUnsched)
	a.lock.opts.Hooks.Granted(ctx, grantOf(n))
	return n, nil
}

// withdraw removes our claim, conditioned on it being unchanged; after a conflict it
// removes whatever claim the node has (a claim of this node's can only stall this
// node). It returns the node as last seen, or nil if that is unknown.
func (a *acquisition) withdraw(ctx context.Context) *corev1.Node {
	n := a.claim
	a.claim = nil
	for range maxConflicts {
		if lockOf(n).State != StateClaiming {
			return n
		}
		done, err := a.write(ctx, n, write{state: StateReady})
		if err == nil {
			a.log.Debug("reboot lock claim withdrawn")
			return done
		}
		if !apierrors.IsConflict(err) {
			break
		}
		if n, err = a.lock.get(ctx, a.name); err != nil {
			break
		}
	}
	a.log.Warn("could not withdraw claim; it goes stale", "staleAfter", a.lock.opts.StaleClaimAge)
	return nil
}

// write applies w to n, conditioned on n's resourceVersion, stamping the time.
func (a *acquisition) write(ctx context.Context, n *corev1.Node, w write) (*corev1.Node, error) {
	w.resourceVersion = n.ResourceVersion
	w.since = a.lock.opts.Clock.Now()
	return a.lock.patch(ctx, n.Name, w)
}

// claimAging reports whether our claim should be rewritten before others may take it
// for stale.
func (a *acquisition) claimAging() bool {
	return a.lock.opts.Clock.Since(lockOf(a.claim).Since) > a.lock.opts.StaleClaimAge/2
}

func (a *acquisition) isStale(st nodeLock) bool {
	return staleClaim(st, a.lock.opts.Clock.Now(), a.lock.opts.StaleClaimAge)
}

// staleClaim reports whether st is a claim older than age at now: its request is gone
// (doc.go), and it no longer counts.
func staleClaim(st nodeLock, now time.Time, age time.Duration) bool {
	return st.State == StateClaiming && now.Sub(st.Since) > age
}

// removeStaleClaim removes a claim its request abandoned, conditioned on the node as
// listed, so that the claim can never be promoted afterwards. It reports whether the
// claim is gone; if not, the caller counts it as live.
func (a *acquisition) removeStaleClaim(ctx context.Context, n *corev1.Node) bool {
	if _, err := a.write(ctx, n, write{state: StateReady}); err != nil {
		a.log.Debug("stale claim not removed", "staleNode", n.Name, "err", err)
		return false
	}
	a.log.Info("stale reboot lock claim removed", "staleNode", n.Name, "claimedAt", lockOf(n).Since)
	return true
}

// drainGaveUp refuses a node whose last drain gave up (the Release failure policy)
// while nothing has changed that would let a new drain finish: cordoning it and
// evicting its pods again would only churn its workloads. The refusal names the
// drain's blocks; an error reading them refuses too (fail closed).
func (a *acquisition) drainGaveUp(ctx context.Context, n *corev1.Node) error {
	p, gaveUp, err := a.lock.drainer.GaveUp(ctx, n)
	if !gaveUp {
		return nil
	}
	if err != nil {
		return apiError("check the last drain", err)
	}
	return &DrainError{Progress: p}
}

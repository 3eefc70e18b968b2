package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// request is one pre-reboot request working for one node.
type request struct {
	*Lock
	name, group string
	log         *slog.Logger
	expires     time.Time // when the request stops waiting for a slot or its drain
	tieExpires  time.Time // when it stops waiting for later claimants to withdraw

	claim      *corev1.Node // the node as our claim left it; nil while we hold no claim
	contending bool         // counted in Lock.contenders
}

// testHookAfterCheck, set by tests, runs between the check and what follows it, to
// widen the window in which concurrent requests interleave.
var testHookAfterCheck func(node string)

// errExpired ends a wait whose request has waited long enough.
var errExpired = errors.New("request expired")

// verdict is what the check decides for a claim.
type verdict int

const (
	promote  verdict = iota // a slot is ours
	wait                    // only later claimants stand in the way; they will withdraw
	withdraw                // holders and earlier claimants take every slot
)

// run drives the node from wherever it is to "holder and drained", or until the
// request expires. Whatever happens, it leaves no claim of its own behind: a claim
// lives only while a request works on it.
func (r *request) run(ctx context.Context, n *corev1.Node) error {
	r.contend(true)
	defer func() {
		if r.claim != nil {
			r.withdraw(context.WithoutCancel(ctx))
		}
		r.contend(false)
	}()
	for conflicts := 0; ; { // conflicts in a row
		if lockOf(n).State == StateRebooting {
			r.contend(false)
			return r.awaitDrain(ctx)
		}
		if err := r.apiDown(); err != nil {
			return err
		}
		if r.claim == nil {
			if err := r.admit(n); err != nil {
				return err
			}
		}
		if r.claim == nil || r.claimAging() {
			claimed, err := r.write(ctx, n, write{state: StateClaiming, group: r.group})
			if apierrors.IsConflict(err) && conflicts < maxConflicts {
				conflicts++
				r.claim = nil
				if n, err = r.get(ctx, r.name); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return apiError("claim lock", err)
			}
			r.claim, n, conflicts = claimed, claimed, 0
			r.log.Debug("reboot lock claimed")
		}
		v, held, err := r.check(ctx)
		if err != nil {
			return err
		}
		if testHookAfterCheck != nil {
			testHookAfterCheck(r.name)
		}
		switch v {
		case promote:
			if err := r.admit(n); err != nil {
				return err // the deferred withdrawal removes our claim
			}
			if n, err = r.promote(ctx); err != nil {
				return err
			}
		case wait:
			if err := r.sleep(ctx, 200*time.Millisecond, r.tieExpires, r.changed.wait(), nil); err != nil {
				return orHeld(err, held)
			}
		case withdraw:
			if n = r.withdraw(ctx); n == nil {
				if n, err = r.get(ctx, r.name); err != nil {
					return err
				}
			}
			if err := r.awaitFreeSlot(ctx); err != nil {
				return orHeld(err, held)
			}
		}
	}
}

// check lists, with a consistent read from the API server (never the cache), the
// nodes that claim or hold the lock, removes stale claims, and decides. It runs only
// after our claim was written: that order is what makes the lock safe (see doc.go).
func (r *request) check(ctx context.Context) (verdict, *HeldError, error) {
	list, err := r.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LabelLock + "=true"})
	if err != nil {
		return 0, nil, apiError("list lock holders", err)
	}
	others := make(map[string]nodeLock, len(list.Items))
	for i := range list.Items {
		n := &list.Items[i]
		st := lockOf(n)
		if n.Name == r.name || st.Group != r.group || r.isStale(st) && r.removeStaleClaim(ctx, n) {
			continue
		}
		others[n.Name] = st
	}
	v, held := decide(r.name, r.group, r.slots(r.group), others)
	return v, held, nil
}

// decide is the lock's rule, given the other nodes of the group that claim or hold:
// H holding, L claiming with a name before ours, G claiming after.
// H+L >= slots: withdraw; H+L+G >= slots: wait; otherwise promote.
func decide(name, group string, slots int, others map[string]nodeLock) (verdict, *HeldError) {
	held := &HeldError{Group: group, Slots: slots}
	later := 0
	for other, st := range others {
		switch {
		case st.State == StateRebooting:
			held.Holders = append(held.Holders, other)
		case st.State != StateClaiming:
		case other < name:
			held.Ahead = append(held.Ahead, other)
		default:
			later++
		}
	}
	slices.Sort(held.Holders)
	slices.Sort(held.Ahead)
	taken := len(held.Holders) + len(held.Ahead)
	switch {
	case taken >= slots:
		return withdraw, held
	case taken+later >= slots:
		return wait, held
	default:
		return promote, held
	}
}

// promote turns our claim into a hold and cordons the node, in one write conditioned
// on the claim: if anything touched the node since (a stale-claim cleaner removed the
// claim), the write fails with 409 and the request claims and checks again.
func (r *request) promote(ctx context.Context) (*corev1.Node, error) {
	c := r.claim
	n, err := r.write(ctx, c, write{
		state:         StateRebooting,
		group:         r.group,
		bootID:        c.Status.NodeInfo.BootID,
		wasUnsched:    new(c.Spec.Unschedulable),
		unschedulable: new(true),
	})
	if apierrors.IsConflict(err) {
		r.claim = nil
		return r.get(ctx, r.name)
	}
	if err != nil {
		return nil, apiError("promote claim", err)
	}
	r.claim = nil
	r.log.Info("reboot lock granted", "wasUnschedulable", c.Spec.Unschedulable)
	return n, nil
}

// withdraw removes our claim, conditioned on it being unchanged; after a conflict it
// removes whatever claim the node has (a claim of this node's can only stall this
// node). It returns the node as last seen, or nil if that is unknown.
func (r *request) withdraw(ctx context.Context) *corev1.Node {
	n := r.claim
	r.claim = nil
	for range maxConflicts {
		if lockOf(n).State != StateClaiming {
			return n
		}
		done, err := r.write(ctx, n, write{state: StateReady})
		if err == nil {
			r.log.Debug("reboot lock claim withdrawn")
			return done
		}
		if !apierrors.IsConflict(err) {
			break
		}
		if n, err = r.get(ctx, r.name); err != nil {
			break
		}
	}
	r.log.Warn("could not withdraw claim; it goes stale", "staleAfter", r.opts.StaleClaimAge)
	return nil
}

// awaitDrain starts or resumes the holder's drain and waits for it to finish.
func (r *request) awaitDrain(ctx context.Context) error {
	if grantBeforeDrain {
		r.drainer.Start(r.name)
		return nil
	}
	for {
		p := r.drainer.Start(r.name)
		switch {
		case p.Drained:
			return r.allow(ctx)
		case p.Failed:
			// The drain gave up under the "release" failure policy: give the slot back
			// and undo our cordon, so that the node serves again and the group moves on.
			n, err := r.get(ctx, r.name)
			if err == nil {
				err = r.release(ctx, n, r.log, releaseDrainFailed)
			}
			if err != nil && !errors.Is(err, ErrNotHolder) {
				return err
			}
			return &DrainError{Progress: p}
		}
		// The drain's end and any lock change wake us; the timer is a fallback.
		if err := r.sleep(ctx, 5*time.Second, r.expires, p.Done, r.changed.wait()); err != nil {
			return orDrain(err, p)
		}
		if n, ok := r.cached(); ok && lockOf(n).State != StateRebooting {
			// Released while draining (an operator?): confirm, then stop.
			if _, err := r.stillHolding(ctx); err != nil {
				return err
			}
		}
	}
}

// cached returns the node as the cache shows it.
func (r *request) cached() (*corev1.Node, bool) {
	obj, ok, err := r.nodes.GetIndexer().GetByKey(r.name)
	if err != nil || !ok {
		return nil, false
	}
	return obj.(*corev1.Node), true
}

// stillHolding reads the node from the API server and returns an error matching
// fleetlock.ErrLockHeld if it no longer holds the lock (an operator released it).
func (r *request) stillHolding(ctx context.Context) (*corev1.Node, error) {
	n, err := r.get(ctx, r.name)
	if err != nil {
		return nil, err
	}
	if lockOf(n).State != StateRebooting {
		r.drainer.Forget(r.name)
		return nil, fmt.Errorf("node %s: reboot lock released while it drained: %w", r.name, fleetlock.ErrLockHeld)
	}
	return n, nil
}

// allow makes sure, with a read from the API server, that the node still holds the
// lock (an operator may have released it while it drained), and runs BeforeReboot,
// before telling it to reboot. With the API server unreachable, nothing is allowed.
func (r *request) allow(ctx context.Context) error {
	n, err := r.stillHolding(ctx)
	if err != nil {
		return err
	}
	if r.opts.BeforeReboot != nil {
		if err := r.opts.BeforeReboot(ctx, n, r.group); err != nil {
			return apiError("before reboot", err)
		}
	}
	r.log.Info("reboot allowed: node drained")
	return nil
}

// awaitFreeSlot waits, without any API request, until the cache shows a slot that may
// be free for us: fewer nodes of the group before us than slots, counting the holders,
// the live claims by earlier names, and this replica's other requests seeking a slot
// for earlier names. The last keeps a herd from forming: when a slot frees, only the
// first waiters of each replica re-claim, not all of them.
func (r *request) awaitFreeSlot(ctx context.Context) error {
	for {
		wake := r.changed.wait() // before the scan, so that no change is missed
		taken := r.earlierContenders()
		objs, _ := r.nodes.GetIndexer().ByIndex(byGroup, r.group)
		for _, o := range objs {
			n := o.(*corev1.Node)
			st := lockOf(n)
			if n.Name != r.name && (st.State == StateRebooting || st.State == StateClaiming && n.Name < r.name && !r.isStale(st)) {
				taken[n.Name] = true
			}
		}
		if len(taken) < r.slots(r.group) {
			return nil
		}
		if err := r.sleep(ctx, 5*time.Second, r.expires, wake, nil); err != nil {
			return err
		}
	}
}

// contend counts the request in, or out of, this replica's requests seeking a slot.
// Counting out wakes the waiters that it held back.
func (r *request) contend(on bool) {
	if r.contending == on {
		return
	}
	r.contending = on
	r.contendersMu.Lock()
	g := r.contenders[r.group]
	if on {
		if g == nil {
			g = map[string]int{}
			r.contenders[r.group] = g
		}
		g[r.name]++
	} else if g[r.name]--; g[r.name] == 0 {
		delete(g, r.name)
	}
	r.contendersMu.Unlock()
	if !on {
		r.changed.fire()
	}
}

// earlierContenders returns the names, before ours, of this replica's other requests
// of our group that seek a slot.
func (r *request) earlierContenders() map[string]bool {
	r.contendersMu.Lock()
	defer r.contendersMu.Unlock()
	out := map[string]bool{}
	for name := range r.contenders[r.group] {
		if name < r.name {
			out[name] = true
		}
	}
	return out
}

// sleep waits until wake or wake2 is signalled (a nil channel never is) or about
// every passes (0: never), and fails when deadline passes or ctx ends.
func (l *Lock) sleep(ctx context.Context, every time.Duration, deadline time.Time, wake, wake2 <-chan struct{}) error {
	left := time.Until(deadline)
	if left <= 0 {
		return errExpired
	}
	d := left
	if every > 0 {
		d = min(jitter(every), left)
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

// write applies w to n, conditioned on n's resourceVersion, stamping the time.
func (r *request) write(ctx context.Context, n *corev1.Node, w write) (*corev1.Node, error) {
	w.resourceVersion = n.ResourceVersion
	w.since = r.opts.Now()
	return r.patch(ctx, n.Name, w)
}

// claimAging reports whether our claim should be rewritten before others may take it
// for stale.
func (r *request) claimAging() bool {
	return r.opts.Now().Sub(lockOf(r.claim).Since) > r.opts.StaleClaimAge/2
}

func (r *request) isStale(st nodeLock) bool {
	return st.State == StateClaiming && r.opts.Now().Sub(st.Since) > r.opts.StaleClaimAge
}

// removeStaleClaim removes a claim its request abandoned, conditioned on the node as
// listed, so that the claim can never be promoted afterwards. It reports whether the
// claim is gone; if not, the caller counts it as live.
func (r *request) removeStaleClaim(ctx context.Context, n *corev1.Node) bool {
	if _, err := r.write(ctx, n, write{state: StateReady}); err != nil {
		r.log.Debug("stale claim not removed", "staleNode", n.Name, "err", err)
		return false
	}
	r.log.Info("stale reboot lock claim removed", "staleNode", n.Name, "claimedAt", lockOf(n).Since)
	return true
}

func orHeld(err error, held *HeldError) error {
	if errors.Is(err, errExpired) {
		return held
	}
	return err
}

func orDrain(err error, p evict.Progress) error {
	if errors.Is(err, errExpired) {
		return &DrainError{Progress: p}
	}
	return err
}

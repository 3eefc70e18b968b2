// Package watcherr records the refusals (403 Forbidden, 401 Unauthorized) of informers'
// list and watch requests, which client-go's reflector otherwise only logs while the
// informer never syncs or silently serves a stale cache, and says in the field's terms
// who was refused what and which RBAC rule is missing. The server's /readyz answers
// with them, and the policy fails closed on the pause ConfigMap's.
package watcherr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
)

// forgetAfter is how long a refusal counts without being seen again: longer than the
// reflector's longest wait between two tries (30 s, jittered up to 60 s), so that a
// refusal stays while the informer keeps being refused, and goes once the informer
// stopped (a drain's pod watch ends with its drain).
const forgetAfter = 2 * time.Minute

// Errors records the refusals of the informers it watches. The zero value is not
// usable: call New. Safe for concurrent use.
type Errors struct {
	log     *slog.Logger // nil: no log
	now     func() time.Time
	version func(*cache.Reflector) string // the reflector's resource version

	mu      sync.Mutex
	refused map[cache.SharedIndexInformer]refusal
}

type refusal struct {
	msg     string // describe's
	r       *cache.Reflector
	version string // r's resource version when refused
	at      time.Time
}

// New returns an Errors; log, if not nil, receives an error line when an informer is
// first refused (and when its refusal changes), naming the missing RBAC rule.
func New(log *slog.Logger) *Errors {
	return &Errors{log: log, now: time.Now, version: (*cache.Reflector).LastSyncResourceVersion,
		refused: map[cache.SharedIndexInformer]refusal{}}
}

// Watch sets inf's watch error handler, before inf starts: a refusal of its list or
// watch (403, 401) is recorded as the refusal of what (a noun phrase, e.g. "the node
// cache") and logged (see New); other errors go to cache.DefaultWatchErrorHandler,
// which logs them through klog as without this handler.
func (e *Errors) Watch(what string, inf cache.SharedIndexInformer) error {
	return inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		if !e.record(what, inf, r, err) {
			cache.DefaultWatchErrorHandler(ctx, r, err)
		}
	})
}

// record records err for inf, whose reflector is r, if err is a refusal (403 or 401),
// and reports whether it was one.
func (e *Errors) record(what string, inf cache.SharedIndexInformer, r *cache.Reflector, err error) bool {
	if !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err) {
		return false
	}
	msg := describe(what, err)
	e.mu.Lock()
	was := e.refused[inf]
	e.refused[inf] = refusal{msg: msg, r: r, version: e.version(r), at: e.now()}
	e.mu.Unlock()
	if e.log != nil && was.msg != msg {
		e.log.Error("list and watch refused by the API server: informer cannot sync", "informer", what, "err", msg)
	}
	return true
}

// inForce reports whether f, inf's refusal, still holds: seen within forgetAfter, and
// inf has not synced (or listed again since, moving its resource version). Call with
// e.mu held.
func (e *Errors) inForce(inf cache.SharedIndexInformer, f refusal) bool {
	return e.now().Sub(f.at) < forgetAfter && (!inf.HasSynced() || e.version(f.r) == f.version)
}

// Err returns the refusals in force, sorted, as one error; nil if none.
func (e *Errors) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var msgs []string
	for inf, f := range e.refused {
		if !e.inForce(inf, f) {
			delete(e.refused, inf)
			continue
		}
		msgs = append(msgs, f.msg)
	}
	if len(msgs) == 0 {
		return nil
	}
	slices.Sort(msgs)
	return errors.New(strings.Join(slices.Compact(msgs), "; "))
}

// ErrOf returns inf's refusal in force, or nil.
func (e *Errors) ErrOf(inf cache.SharedIndexInformer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f, ok := e.refused[inf]; ok && e.inForce(inf, f) {
		return errors.New(f.msg)
	}
	return nil
}

// forbiddenMessage parses the API server's 403 message (k8s.io/apiserver's
// forbiddenMessage): user, verb, resource, API group, namespace (empty: cluster scope).
var forbiddenMessage = regexp.MustCompile(`User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(?: in the namespace "([^"]*)"| at the cluster scope)`)

// describe says, for the informer of what refused with err, who may not do what and
// the RBAC rule that would allow it, followed by the API server's own message.
func describe(what string, err error) string {
	said := " (the API server said: " + err.Error() + ")"
	if apierrors.IsUnauthorized(err) {
		return what + ": the API server does not accept the credentials (an expired or revoked token, or a wrong kubeconfig)" + said
	}
	m := forbiddenMessage.FindStringSubmatch(err.Error())
	if m == nil {
		return what + ": list and watch forbidden" + said
	}
	user, verb, resource, group, namespace := m[1], m[2], m[3], m[4], m[5]
	who := fmt.Sprintf("user %q", user)
	if sa, ok := strings.CutPrefix(user, "system:serviceaccount:"); ok {
		if ns, name, ok := strings.Cut(sa, ":"); ok {
			who = "ServiceAccount " + ns + "/" + name
		}
	}
	target, names := resource, ""
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Details != nil && status.Status().Details.Name != "" {
		name := status.Status().Details.Name
		target += fmt.Sprintf(" %q", name)
		names = "resourceNames: [" + name + "], "
	}
	where, role := "at the cluster scope", "a ClusterRole"
	if namespace != "" {
		where, role = "in namespace "+namespace, "a Role in namespace "+namespace
	}
	return fmt.Sprintf("%s: %s may not %s %s %s: RBAC rule missing: {apiGroups: [%q], resources: [%s], %sverbs: [list, watch]} in %s bound to %s%s",
		what, who, verb, target, where, group, resource, names, role, who, said)
}

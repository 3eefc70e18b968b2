package policy

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/watcherr"
	"github.com/reboot-manager/reboot-manager/lock"
)

// DefaultPauseConfigMap is the name of the ConfigMap whose existence pauses reboots.
const DefaultPauseConfigMap = "reboot-manager-pause"

// Options configure a Policy.
type Options struct {
	// Config returns the configuration in force; called on every decision, so a
	// reloaded file takes effect at once. Required.
	Config func() *Config
	// ConfigState says where Config comes from and whether its source is in force
	// (File.State), for the config metrics and status. Default: none (a fixed
	// policy), and no config metrics.
	ConfigState func() ConfigState
	// Client reads the pause ConfigMap and the pods of pod blockers.
	Client kubernetes.Interface
	// Namespace holds the pause ConfigMap.
	Namespace string
	// PauseConfigMap is the name of the ConfigMap whose existence pauses every new
	// grant. Default DefaultPauseConfigMap.
	PauseConfigMap string
	// Logger receives blocker changes. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// WatchErrors records the refusals (403, 401) of the pause ConfigMap's list and
	// watch, for the server's /readyz. Default: a record of the Policy's own. Either
	// way, while the pause ConfigMap cannot be read, reboots are held as paused.
	WatchErrors *watcherr.Errors
}

// Policy is the operator's policy in force. It implements lock.Policy.
type Policy struct {
	opts   Options
	log    *slog.Logger
	pauses cache.SharedIndexInformer
	// watchErrors holds the pause ConfigMap's refusals: Options.WatchErrors or own.
	watchErrors *watcherr.Errors

	mu     sync.Mutex
	alerts probe // the alerts checks
	pods   probe // the pods checks

	clientMu  sync.Mutex
	client    *http.Client   // the alerts blocker's
	clientFor *AlertsBlocker // the configuration client was built from
}

var _ lock.Policy = (*Policy)(nil)

// New returns a Policy; Start it before use.
func New(opts Options) *Policy {
	if opts.PauseConfigMap == "" {
		opts.PauseConfigMap = DefaultPauseConfigMap
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Policy{opts: opts, log: opts.Logger, alerts: probe{name: blockerAlerts}, pods: probe{name: blockerPods}}
	if opts.Client != nil {
		f := informers.NewSharedInformerFactoryWithOptions(opts.Client, 0,
			informers.WithNamespace(opts.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", opts.PauseConfigMap).String()
			}))
		p.pauses = f.Core().V1().ConfigMaps().Informer()
		p.watchErrors = cmp.Or(opts.WatchErrors, watcherr.New(nil))
		if err := p.watchErrors.Watch("the pause ConfigMap", p.pauses); err != nil {
			panic(err) // a new informer has not started
		}
	}
	return p
}

// Start starts watching the pause ConfigMap, waits until its cache has synced, and
// runs the blockers' checks in the background until ctx ends.
func (p *Policy) Start(ctx context.Context) error {
	if p.pauses != nil {
		go p.pauses.Run(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), p.pauses.HasSynced) {
			return fmt.Errorf("pause ConfigMap cache did not sync: %w", ctx.Err())
		}
	}
	go p.probeLoop(ctx)
	return nil
}

// Config is the configuration in force.
func (p *Policy) Config() *Config { return p.opts.Config() }

// ConfigState says where the policy in force comes from and why its source, as it
// is now, is not in force, if it is not. Zero without Options.ConfigState.
func (p *Policy) ConfigState() ConfigState {
	if p.opts.ConfigState == nil {
		return ConfigState{}
	}
	return p.opts.ConfigState()
}

// Slots is the group's slot count in force.
func (p *Policy) Slots(group string) int { return *p.Config().Group(group).Slots }

// Groups returns the configured groups, "default" included, sorted.
func (p *Policy) Groups() []string {
	groups := []string{"default"}
	for g := range p.Config().Groups {
		if g != "default" {
			groups = append(groups, g)
		}
	}
	slices.Sort(groups)
	return groups
}

// After returns the groups that group goes after (its after list in the policy file,
// never Defaults'), in the file's order; nil for none.
func (p *Policy) After(group string) []string { return slices.Clone(p.Config().Groups[group].After) }

// DefaultStaleHolderAfter is Config.StaleHolderAfter's default: a holder that rebooted
// and has been Ready an hour without calling steady-state is released. Safe: it counts
// only a new boot ID and Ready, never the time alone.
const DefaultStaleHolderAfter = time.Hour

// StaleHolderAfter is the configured stale-holder time (DefaultStaleHolderAfter
// unless set); 0: off.
func (p *Policy) StaleHolderAfter() time.Duration {
	if d := p.Config().StaleHolderAfter; d != nil {
		return d.Duration
	}
	return DefaultStaleHolderAfter
}

// Paused returns the pause's reason and true while the pause ConfigMap exists, or
// while it cannot be read (its list or watch refused: fail closed), with why.
func (p *Policy) Paused() (string, bool) {
	if p.pauses == nil {
		return "", false
	}
	if err := p.pauseUnreadable(); err != nil {
		return err.Error(), true
	}
	for _, obj := range p.pauses.GetStore().List() {
		cm := obj.(*corev1.ConfigMap)
		if cm.Name == p.opts.PauseConfigMap {
			return strings.TrimSpace(cm.Data["reason"]), true
		}
	}
	return "", false
}

// pauseUnreadable returns why the pause ConfigMap cannot be read (its list or watch
// is refused), or nil.
func (p *Policy) pauseUnreadable() error {
	if err := p.watchErrors.ErrOf(p.pauses); err != nil {
		return fmt.Errorf("the pause ConfigMap %s/%s cannot be read, so reboots are held as if paused: %w",
			p.opts.Namespace, p.opts.PauseConfigMap, err)
	}
	return nil
}

// Admit implements lock.Policy: the checks in order, the first that refuses wins.
func (p *Policy) Admit(c lock.Candidate) error {
	cfg := p.Config()
	now := p.opts.Now()
	if p.pauses != nil {
		if err := p.pauseUnreadable(); err != nil {
			return refuse("RebootPaused", fleetlock.ErrPaused, "pause ConfigMap unreadable", "%v", err)
		}
	}
	if reason, paused := p.Paused(); paused {
		return refuse("RebootPaused", fleetlock.ErrPaused, reason, "reboots paused by ConfigMap %s/%s%s",
			p.opts.Namespace, p.opts.PauseConfigMap, because(reason))
	}
	if reason, held := c.Node.Annotations[lock.AnnotationHold]; held {
		return refuse("RebootHeld", fleetlock.ErrNodeHeld, reason, "node %s held by annotation %s%s",
			c.Node.Name, lock.AnnotationHold, because(reason))
	}
	g := cfg.Group(c.Group)
	if !g.WindowOpen(now) {
		return refuse("RebootWindowClosed", fleetlock.ErrWindowClosed, "", "group %q: no reboot window open (%s)",
			c.Group, windowsString(g.Windows))
	}
	if gap := g.MinGap.Duration; gap > 0 && !c.LastRelease.IsZero() && now.Sub(c.LastRelease) < gap {
		return refuse("RebootGap", fleetlock.ErrRebootGap, "", "group %q: last reboot ended %s ago, the minimum gap is %s",
			c.Group, now.Sub(c.LastRelease).Round(time.Second), gap)
	}
	if err := p.alertsBlock(cfg, now); err != nil {
		return err
	}
	if err := p.podsBlock(cfg, c.Node.Name, now); err != nil {
		return err
	}
	if cfg.Blockers.NotReadyNodes {
		var notReady []string
		for _, m := range c.Members {
			if _, holding := lock.HolderOf(m); !holding && !lock.NodeReady(m) {
				notReady = append(notReady, m.Name)
			}
		}
		if len(notReady) > 0 {
			sort.Strings(notReady)
			list := strings.Join(notReady, ", ")
			return refuse("RebootGroupNotReady", fleetlock.ErrGroupNotReady, list, "group %q: not Ready: %s", c.Group, list)
		}
	}
	return nil
}

// refuse builds a *lock.Refusal; its Cause is the reason and cause, a detail that
// stays the same while the refusal's cause does (alert names, an error), not the
// changing parts of the message (ages).
func refuse(reason string, sentinel error, cause, format string, args ...any) error {
	if cause != "" {
		cause = reason + ": " + cause
	} else {
		cause = reason
	}
	return &lock.Refusal{Reason: reason, Err: sentinel, Cause: cause, Msg: fmt.Sprintf(format, args...)}
}

func because(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}

func windowsString(ws []Window) string {
	s := make([]string, len(ws))
	for i := range ws {
		s[i] = ws[i].String()
	}
	return strings.Join(s, "; ")
}

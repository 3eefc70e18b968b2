package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
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
	// HTTPClient asks Prometheus. Default: a client with a 10-second timeout.
	HTTPClient *http.Client
	// Logger receives blocker changes. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Policy is the operator's policy in force. It implements lock.Gate.
type Policy struct {
	opts   Options
	log    *slog.Logger
	pauses cache.SharedIndexInformer

	mu     sync.Mutex
	alerts probeResult // the last alerts check
	pods   probeResult // the last pods check
}

// probeResult is what a background check found, and when.
type probeResult struct {
	at     time.Time
	err    error
	found  []string            // firing alerts or blocking pods (cluster scope), sorted
	byNode map[string][]string // blocking pods of node-scoped blockers, by node
}

var _ lock.Gate = (*Policy)(nil)

// New returns a Policy; Start it before use.
func New(opts Options) *Policy {
	if opts.PauseConfigMap == "" {
		opts.PauseConfigMap = DefaultPauseConfigMap
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Policy{opts: opts, log: opts.Logger}
	if opts.Client != nil {
		f := informers.NewSharedInformerFactoryWithOptions(opts.Client, 0,
			informers.WithNamespace(opts.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", opts.PauseConfigMap).String()
			}))
		p.pauses = f.Core().V1().ConfigMaps().Informer()
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

// ReleaseWhenReady tells whether the health gate is on.
func (p *Policy) ReleaseWhenReady() bool { return p.Config().releaseWhenReady() }

// StaleHolderAfter is the configured stale-holder time; 0: off.
func (p *Policy) StaleHolderAfter() time.Duration { return p.Config().StaleHolderAfter.Duration }

// Paused returns the pause's reason and true while the pause ConfigMap exists.
func (p *Policy) Paused() (string, bool) {
	if p.pauses == nil {
		return "", false
	}
	for _, obj := range p.pauses.GetStore().List() {
		cm := obj.(*corev1.ConfigMap)
		if cm.Name == p.opts.PauseConfigMap {
			return strings.TrimSpace(cm.Data["reason"]), true
		}
	}
	return "", false
}

// Admit implements lock.Gate: the checks in order, the first that refuses wins.
func (p *Policy) Admit(c lock.Candidate) error {
	cfg := p.Config()
	now := p.opts.Now()
	if reason, paused := p.Paused(); paused {
		return refuse("RebootPaused", fleetlock.ErrPaused, "reboots paused by ConfigMap %s/%s%s",
			p.opts.Namespace, p.opts.PauseConfigMap, because(reason))
	}
	if reason, held := c.Node.Annotations[lock.AnnotationHold]; held {
		return refuse("RebootHeld", fleetlock.ErrNodeHeld, "node %s held by annotation %s%s",
			c.Node.Name, lock.AnnotationHold, because(reason))
	}
	g := cfg.Group(c.Group)
	if !g.WindowOpen(now) {
		return refuse("RebootWindowClosed", fleetlock.ErrWindowClosed, "group %q: no reboot window open (%s)",
			c.Group, windowsString(g.Windows))
	}
	if gap := g.MinGap.Duration; gap > 0 && !c.LastRelease.IsZero() && now.Sub(c.LastRelease) < gap {
		return refuse("RebootGap", fleetlock.ErrRebootGap, "group %q: last reboot ended %s ago, the minimum gap is %s",
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
			return refuse("RebootGroupNotReady", fleetlock.ErrGroupNotReady, "group %q: not Ready: %s",
				c.Group, strings.Join(notReady, ", "))
		}
	}
	return nil
}

// refuse builds a *lock.Refusal.
func refuse(reason string, sentinel error, format string, args ...any) error {
	return &lock.Refusal{Reason: reason, Err: sentinel, Msg: fmt.Sprintf(format, args...)}
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

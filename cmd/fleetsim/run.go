package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

func run(ctx context.Context, c config, out io.Writer) error {
	if _, err := os.Stat(c.rebootManager); err != nil {
		return fmt.Errorf("no reboot-manager binary (run make build): %w", err)
	}
	fmt.Fprintln(out, "starting a local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)...")
	env, err := controlplane.StartEnv(ctx)
	if err != nil {
		return err
	}
	defer env.Stop()
	ns := "fleet"
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for { // pods cannot be created before the namespace's default ServiceAccount
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}

	args := []string{"--wait=" + c.wait.String(), "--log-format=text"}
	for _, g := range c.groups {
		args = append(args, fmt.Sprintf("--group-slots=%s=%d", g.Name, g.Slots))
	}
	var endpoints []string
	for i := range c.replicas {
		logs := &fleetsim.LogBuffer{}
		s, err := fleetsim.StartServer(c.rebootManager, env.Kubeconfig, logs, args...)
		if err != nil {
			return err
		}
		defer func() { _ = s.Stop() }()
		endpoints = append(endpoints, s.FleetLock)
		fmt.Fprintf(out, "reboot-manager replica %d: FleetLock %s  metrics %s/metrics\n", i+1, s.FleetLock, s.Admin)
	}
	fmt.Fprintf(out, "kubectl --kubeconfig %s get nodes -L rebootmanager/lock\n", env.Kubeconfig)

	progress := newProgress(out)
	f, err := fleetsim.New(ctx, env.Client, env.Kubelet, fleetsim.Options{
		Name: "fcos", Namespace: ns, Groups: c.groups, Poll: c.poll, Downtime: c.downtime,
		Endpoints: endpoints, PreCordoned: 1, OnEvent: progress.event,
		Log: func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) },
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "fleet ready: %d nodes in %d groups, a Deployment per group under a PodDisruptionBudget (maxUnavailable 1), a DaemonSet everywhere; the last node of each group was cordoned by an operator\n", len(f.Nodes()), len(c.groups))
	fmt.Fprintln(out, "rolling an OS update: every node's Zincati asks to reboot now")
	progress.start()
	rep, rollErr := f.Roll(ctx)
	if rep != nil {
		fmt.Fprintf(out, "\n%s", rep.Summary())
		if err := os.WriteFile(c.svg, rep.SVG(), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "timeline: %s\n", c.svg)
	}
	if rollErr != nil {
		return rollErr
	}
	if c.linger > 0 {
		fmt.Fprintf(out, "keeping everything up for %s (Ctrl-C to stop)\n", c.linger)
		select {
		case <-ctx.Done():
		case <-time.After(c.linger):
		}
	}
	if len(rep.Violations) > 0 {
		return fmt.Errorf("%d invariant violations", len(rep.Violations))
	}
	return nil
}

// progress prints every step of every node, and who is where after each change.
type progress struct {
	out   io.Writer
	mu    sync.Mutex
	t0    time.Time
	phase map[string]fleetsim.Phase
}

func newProgress(out io.Writer) *progress {
	return &progress{out: out, phase: map[string]fleetsim.Phase{}}
}

func (p *progress) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.t0 = time.Now()
}

func (p *progress) event(e fleetsim.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.t0.IsZero() {
		return
	}
	t := e.Time.Sub(p.t0).Seconds()
	if e.Phase == "" { // a "not yet" answer
		fmt.Fprintf(p.out, "%6.1fs  %-15s %s\n", t, e.Node, e.Detail)
		return
	}
	p.phase[e.Node] = e.Phase
	fmt.Fprintf(p.out, "%6.1fs  %-15s %-10s %s   [%s]\n", t, e.Node, e.Phase, e.Detail, p.board())
}

// board summarises who is where: "draining: a-01 | rebooting: b-00 b-01 | done 3".
func (p *progress) board() string {
	by := map[fleetsim.Phase][]string{}
	for n, ph := range p.phase {
		by[ph] = append(by[ph], n)
	}
	var parts []string
	for _, ph := range []fleetsim.Phase{fleetsim.PhaseDraining, fleetsim.PhaseRebooting, fleetsim.PhaseBack} {
		if names := by[ph]; len(names) > 0 {
			sort.Strings(names)
			parts = append(parts, string(ph)+": "+strings.Join(names, " "))
		}
	}
	parts = append(parts, fmt.Sprintf("waiting %d, done %d", len(by[fleetsim.PhaseWaiting]), len(by[fleetsim.PhaseDone])))
	return strings.Join(parts, " | ")
}

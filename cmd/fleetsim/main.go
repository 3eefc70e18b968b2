// Command fleetsim shows reboot-manager at work without a cloud account: it starts a
// local Kubernetes control plane, a simulated fleet of Fedora CoreOS nodes running real
// workloads under PodDisruptionBudgets, and reboot-manager, then rolls an OS update
// across the fleet with one simulated Zincati per node. It prints each step as it
// happens, a summary at the end, and draws the rollout's timeline as an SVG.
//
//	make demo    # or: go run ./cmd/fleetsim --reboot-manager=bin/reboot-manager
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
)

type config struct {
	rebootManager string
	groups        []fleetsim.Group
	replicas      int
	poll          time.Duration
	downtime      time.Duration
	wait          time.Duration
	svg           string
	linger        time.Duration
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("fleetsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.rebootManager, "reboot-manager", "bin/reboot-manager", "the reboot-manager binary to run (make build)")
	fs.Func("group", "NAME=NODES/SLOTS: a group of the fleet (repeatable; default workers=5/1 and infra=3/2)", func(s string) error {
		name, rest, ok := strings.Cut(s, "=")
		nodes, slots, ok2 := strings.Cut(rest, "/")
		n, err1 := strconv.Atoi(nodes)
		k, err2 := strconv.Atoi(slots)
		if !ok || !ok2 || err1 != nil || err2 != nil || n < 1 || k < 1 || name == "" {
			return fmt.Errorf("want NAME=NODES/SLOTS, e.g. workers=5/1, got %q", s)
		}
		c.groups = append(c.groups, fleetsim.Group{Name: name, Nodes: n, Slots: k})
		return nil
	})
	fs.IntVar(&c.replicas, "replicas", 2, "reboot-manager replicas; the simulated Zincatis spread their requests over them")
	fs.DurationVar(&c.poll, "poll", 3*time.Second, "how long a simulated Zincati waits before asking again (Zincati: 5 minutes)")
	fs.DurationVar(&c.downtime, "downtime", 2*time.Second, "how long a reboot keeps a node NotReady")
	fs.DurationVar(&c.wait, "wait", 30*time.Second, "reboot-manager's --wait")
	fs.StringVar(&c.svg, "svg", "rollout.svg", "where to write the timeline picture")
	fs.DurationVar(&c.linger, "linger", 0, "keep everything running this long after the rollout, e.g. to look at /metrics")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if len(c.groups) == 0 {
		c.groups = []fleetsim.Group{{Name: "workers", Nodes: 5, Slots: 1}, {Name: "infra", Nodes: 3, Slots: 2}}
	}
	if c.replicas < 1 {
		return c, errors.New("--replicas must be at least 1")
	}
	return c, nil
}

func main() {
	c, err := parseConfig(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

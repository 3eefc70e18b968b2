package fleetsim

import (
	"bytes"
	"fmt"
	"html"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// NodeReport is one node's rollout. A zero time means the step never happened.
type NodeReport struct {
	Name, Group string
	// Asked: first pre-reboot. Locked: took a slot. Allowed: told to reboot.
	// Back: Ready again. Released: steady-state answered 2xx.
	Asked, Locked, Allowed, Back, Released time.Time
	// Requests is how many FleetLock requests its Zincati sent.
	Requests int
	// Restarts is how often its Zincati restarted while waiting (Options.RestartWhileWaiting).
	Restarts int
}

// Wait is the time from the first pre-reboot to taking a slot.
func (n NodeReport) Wait() time.Duration { return since(n.Asked, n.Locked) }

// Drain is the time from taking a slot to being told to reboot.
func (n NodeReport) Drain() time.Duration { return since(n.Locked, n.Allowed) }

// Reboot is the time from being told to reboot to the slot's release.
func (n NodeReport) Reboot() time.Duration { return since(n.Allowed, n.Released) }

func since(a, b time.Time) time.Duration {
	if a.IsZero() || b.IsZero() {
		return 0
	}
	return b.Sub(a)
}

// Report is the outcome of a rollout.
type Report struct {
	Start, End time.Time
	Nodes      []NodeReport
	Violations []Violation
	// MostHeld is, per group, the most nodes that held the lock at once.
	MostHeld map[string]int
	// OrderRaces counts the grants of a group with After during which a node of a
	// group it goes after began to wait, claim or hold between the grant's claim and
	// its promotion: the lock's fresh read falls in between and may not have seen it,
	// so it is not a violation, but it is a node that waited while the other held.
	OrderRaces int
}

func (f *Fleet) report(start, end time.Time, chk *checker) *Report {
	r := &Report{Start: start, End: end, MostHeld: map[string]int{}}
	for _, n := range f.nodes {
		n.mu.Lock()
		r.Nodes = append(r.Nodes, NodeReport{
			Name: n.name, Group: n.group, Asked: n.asked, Locked: n.locked, Allowed: n.allowed,
			Back: n.back, Released: n.released, Requests: n.requests, Restarts: n.restarts,
		})
		n.mu.Unlock()
	}
	sort.Slice(r.Nodes, func(i, j int) bool { return r.Nodes[i].Name < r.Nodes[j].Name })
	chk.mu.Lock()
	r.Violations = append(r.Violations, chk.violations...)
	r.OrderRaces = chk.order.races
	for g, m := range chk.mostHeld {
		if g != "" {
			r.MostHeld[g] = m
		}
	}
	chk.mu.Unlock()
	return r
}

// Makespan is the time from the first pre-reboot to the last release.
func (r *Report) Makespan() time.Duration {
	var first, last time.Time
	for _, n := range r.Nodes {
		if !n.Asked.IsZero() && (first.IsZero() || n.Asked.Before(first)) {
			first = n.Asked
		}
		if n.Released.After(last) {
			last = n.Released
		}
	}
	return since(first, last)
}

// Summary is a table a person can read: per node, then the totals.
func (r *Report) Summary() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "node\tgroup\twait\tdrain\treboot+back\trequests\t")
	var wait, drain, reboot time.Duration
	requests := 0
	for _, n := range r.Nodes {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t\n", n.Name, n.Group, sec(n.Wait()), sec(n.Drain()), sec(n.Reboot()), n.Requests)
		wait, drain, reboot, requests = wait+n.Wait(), drain+n.Drain(), reboot+n.Reboot(), requests+n.Requests
	}
	w.Flush()
	if k := len(r.Nodes); k > 0 {
		fmt.Fprintf(&b, "\nmakespan %s for %d nodes; mean wait %s, drain %s, reboot+back %s; %d FleetLock requests\n",
			sec(r.Makespan()), k, sec(wait/time.Duration(k)), sec(drain/time.Duration(k)), sec(reboot/time.Duration(k)), requests)
	}
	groups := make([]string, 0, len(r.MostHeld))
	for g := range r.MostHeld {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		fmt.Fprintf(&b, "group %s: at most %d of its nodes held the lock at once\n", g, r.MostHeld[g])
	}
	if len(r.Violations) == 0 {
		b.WriteString("invariants: all held\n")
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "VIOLATION %s\n", v)
	}
	return b.String()
}

func sec(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

// SVG draws the rollout as a timeline: one row per node, one bar per phase.
func (r *Report) SVG() []byte {
	const rowH, left, width, top = 22, 170, 760, 40
	span := r.End.Sub(r.Start).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 {
		if t.IsZero() {
			return left + width
		}
		return left + width*t.Sub(r.Start).Seconds()/span
	}
	height := top + rowH*len(r.Nodes) + 50
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", left+width+20, height)
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14">reboot-manager rollout: %d nodes, makespan %s</text>`+"\n", len(r.Nodes), sec(r.Makespan()))
	phases := []struct {
		name  string
		color string
		from  func(NodeReport) time.Time
		to    func(NodeReport) time.Time
	}{
		{"waiting", "#c9c9c9", func(n NodeReport) time.Time { return n.Asked }, func(n NodeReport) time.Time { return n.Locked }},
		{"draining", "#f0a030", func(n NodeReport) time.Time { return n.Locked }, func(n NodeReport) time.Time { return n.Allowed }},
		{"rebooting", "#d04040", func(n NodeReport) time.Time { return n.Allowed }, func(n NodeReport) time.Time { return n.Back }},
		{"back, releasing", "#4080d0", func(n NodeReport) time.Time { return n.Back }, func(n NodeReport) time.Time { return n.Released }},
	}
	for i, n := range r.Nodes {
		y := top + i*rowH
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+15, html.EscapeString(n.Name))
		for _, p := range phases {
			from, to := p.from(n), p.to(n)
			if from.IsZero() {
				continue
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s</title></rect>`+"\n",
				x(from), y+3, max(x(to)-x(from), 1), rowH-6, p.color, p.name, sec(since(from, to)))
		}
	}
	ly := top + rowH*len(r.Nodes) + 20
	for i, p := range phases {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left+i*150, ly, p.color, left+i*150+16, ly+11, p.name)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left+width, ly+11, sec(r.End.Sub(r.Start)))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

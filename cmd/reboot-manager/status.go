package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
)

// status is what `reboot-manager status` prints and GET /status serves: the lock, the
// policy in force and what holds reboots back, for humans.
type status struct {
	Time time.Time `json:"time"`
	// Source is "server" (a replica's live view: its cache, its drains, its blockers'
	// last checks) or "cluster" (read from the API server by the status command).
	Source string `json:"source"`
	// Policy is where the policy shown comes from and, when its source as it is now is
	// not in force (unreadable, invalid), why; absent for a policy from flags.
	Policy *policy.ConfigState `json:"policy,omitempty"`
	// Paused is the pause ConfigMap's reason; absent when not paused.
	Paused *pauseStatus `json:"paused,omitempty"`
	// Groups is empty when the policy in force is unknown (Policy.Error).
	Groups  []groupStatus  `json:"groups"`
	Holders []holderStatus `json:"holders"`
	// Waiting are the nodes that wait for a slot, by group and in each group's order;
	// a waiter that stopped asking (lock.Waiter.Stale) is not shown.
	Waiting  []waiterStatus        `json:"waiting"`
	Held     []heldNode            `json:"heldNodes,omitempty"`
	Blockers []policy.BlockerState `json:"blockers,omitempty"`
	// Replacements are the records of replacing nodes that failed to return (with
	// --cloud): state, instance, group, since when and why.
	Replacements []replace.Record `json:"replacements,omitempty"`
	// Note says what this view could not know.
	Note string `json:"note,omitempty"`
}

type pauseStatus struct {
	Reason string `json:"reason"`
}

type groupStatus struct {
	Name    string `json:"name"`
	Slots   int    `json:"slots"`
	Holders int    `json:"holders"`
	Claims  int    `json:"claims"`
	// Waiting is how many of the group's nodes wait for a slot (Status.Waiting).
	Waiting    int      `json:"waiting"`
	WindowOpen bool     `json:"windowOpen"`
	Windows    []string `json:"windows,omitempty"`
	MinGap     string   `json:"minGap,omitempty"`
	// After are the groups this one goes after; HeldBackBy the nodes of those that
	// hold, claim or wait, which hold this group's nodes back (lock.OrderBlockers).
	After      []string            `json:"after"`
	HeldBackBy []lock.OrderBlocker `json:"heldBackBy,omitempty"`
}

// order is the group's ORDER column: "-", or "after" its groups and, when held back,
// by which nodes.
func (g groupStatus) order() string {
	if len(g.After) == 0 {
		return "-"
	}
	s := "after " + strings.Join(g.After, ", ")
	if len(g.HeldBackBy) == 0 {
		return s
	}
	by := make([]string, len(g.HeldBackBy))
	for i, b := range g.HeldBackBy {
		by[i] = fmt.Sprintf("%s (%s)", b.Node, b.State)
	}
	return s + ": held back by " + strings.Join(by, ", ")
}

type holderStatus struct {
	Node  string     `json:"node"`
	Group string     `json:"group"`
	State lock.State `json:"state"`
	Since time.Time  `json:"since"`
	// Age is how long the node has been in State.
	Age string `json:"age"`
	// Drain is the drain's progress, as far as this view knows it.
	Drain string `json:"drain,omitempty"`
	// ReservedUntil is set when the slot was reserved for the node while it had no
	// request open (lock.AnnotationReservedUntil): its pre-reboot is due by then, or
	// the slot is given back.
	ReservedUntil *time.Time `json:"reservedUntil,omitempty"`
}

// waiterStatus is a node that waits for a slot (lock.Waiter).
type waiterStatus struct {
	Node  string `json:"node"`
	Group string `json:"group"`
	// Place is its 1-based place in its group's order: the order in which the lock
	// grants the group's slots.
	Place int `json:"place"`
	// Since is when its current wait began; Age is how long ago.
	Since time.Time `json:"since"`
	Age   string    `json:"age"`
	// RequestOpen is true while a pre-reboot request of the node is held open, until
	// RequestUntil (absent when none is open).
	RequestOpen  bool       `json:"requestOpen"`
	RequestUntil *time.Time `json:"requestUntil,omitempty"`
	// LastRequest is when its latest pre-reboot request arrived, or ended if it has;
	// absent if not recorded.
	LastRequest *time.Time `json:"lastRequest,omitempty"`
}

type heldNode struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// statusInput is what a status is made of; the server and the command fill it from
// their own sources.
type statusInput struct {
	now      time.Time
	source   string
	nodes    []*corev1.Node
	config   *policy.Config
	paused   func() (string, bool)
	drain    func(node string) string
	blockers []policy.BlockerState
	// replacements are the replacement records; nil when there are none or unknown.
	replacements []replace.Record
	note         string
	// configState is the policy's source and its error; zero: from flags.
	configState policy.ConfigState
}

// buildStatus computes the status from its input.
func buildStatus(in statusInput) status {
	s := status{Time: in.now.UTC(), Source: in.source, Blockers: in.blockers, Note: in.note,
		Holders: []holderStatus{}, Waiting: []waiterStatus{}, Replacements: in.replacements}
	if in.configState.Source != "" {
		s.Policy = &in.configState
	}
	if reason, ok := in.paused(); ok {
		s.Paused = &pauseStatus{Reason: reason}
	}
	groups := map[string]*groupStatus{}
	group := func(name string) *groupStatus {
		if g := groups[name]; g != nil {
			return g
		}
		cfg := in.config.Group(name)
		g := &groupStatus{Name: name, Slots: *cfg.Slots, WindowOpen: cfg.WindowOpen(in.now)}
		for i := range cfg.Windows {
			g.Windows = append(g.Windows, cfg.Windows[i].String())
		}
		if cfg.MinGap.Duration > 0 {
			g.MinGap = cfg.MinGap.String()
		}
		g.After = append([]string{}, cfg.After...)
		g.HeldBackBy = lock.OrderBlockers(g.After, in.nodes, in.now, 0, lock.DefaultStaleClaimAge)
		groups[name] = g
		return g
	}
	if in.config != nil { // nil: the policy in force is unknown here
		for _, name := range in.config.GroupNames() {
			group(name)
		}
	}
	for _, n := range in.nodes {
		if reason, ok := n.Annotations[lock.AnnotationHold]; ok {
			s.Held = append(s.Held, heldNode{Node: n.Name, Reason: reason})
		}
		h, ok := lock.HolderOf(n)
		if !ok {
			continue
		}
		if in.config != nil {
			g := group(h.Group)
			if h.State == lock.StateClaiming {
				g.Claims++
			} else {
				g.Holders++
			}
		}
		hs := holderStatus{Node: h.Node, Group: h.Group, State: h.State, Since: h.Since.UTC(),
			Age: in.now.Sub(h.Since).Round(time.Second).String(), ReservedUntil: utcOrNil(h.ReservedUntil)}
		if h.State == lock.StateRebooting && in.drain != nil {
			hs.Drain = in.drain(h.Node)
		}
		s.Holders = append(s.Holders, hs)
	}
	for name, ws := range lock.Queue(in.nodes, in.now, 0) {
		if in.config != nil {
			group(name).Waiting = len(ws)
		}
		for _, w := range ws {
			row := waiterStatus{Node: w.Node, Group: w.Group, Place: w.Place, Since: w.Since.UTC(),
				Age: in.now.Sub(w.Since).Round(time.Second).String(), RequestOpen: w.Open(in.now),
				LastRequest: utcOrNil(w.LastRequest)}
			if row.RequestOpen {
				row.RequestUntil = utcOrNil(w.RequestUntil)
			}
			s.Waiting = append(s.Waiting, row)
		}
	}
	for _, g := range groups {
		s.Groups = append(s.Groups, *g)
	}
	slices.SortFunc(s.Groups, func(a, b groupStatus) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Holders, func(a, b holderStatus) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Node, b.Node))
	})
	slices.SortFunc(s.Waiting, func(a, b waiterStatus) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Place, b.Place))
	})
	slices.SortFunc(s.Held, func(a, b heldNode) int { return cmp.Compare(a.Node, b.Node) })
	return s
}

// utcOrNil returns t in UTC, or nil for the zero time.
func utcOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// writeJSON writes the status as indented JSON.
func (s status) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// writeText writes the status as tables for a terminal.
func (s status) writeText(w io.Writer) error { return s.writeTables(w, false) }

// writeTables writes the status as tables; wide adds columns (status -o wide): when
// each holder entered its state.
func (s status) writeTables(w io.Writer, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "reboot-manager status at %s (from the %s)\n", s.Time.Format(time.RFC3339), s.Source)
	writePolicyState(tw, s.Policy)
	if s.Paused != nil {
		fmt.Fprintf(tw, "PAUSED: %s\n", cmp.Or(s.Paused.Reason, "(no reason given)"))
	} else {
		fmt.Fprintln(tw, "not paused")
	}
	if len(s.Groups) > 0 {
		fmt.Fprintln(tw, "\nGROUP\tSLOTS\tHOLDERS\tCLAIMS\tWAITING\tWINDOW\tMIN GAP\tORDER")
	}
	for _, g := range s.Groups {
		window := "open (no windows)"
		if len(g.Windows) > 0 {
			window = "closed: " + strings.Join(g.Windows, "; ")
			if g.WindowOpen {
				window = "open: " + strings.Join(g.Windows, "; ")
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", g.Name, g.Slots, g.Holders, g.Claims, g.Waiting, window, cmp.Or(g.MinGap, "-"), g.order())
	}
	fmt.Fprint(tw, "\nNODE\tGROUP\tSTATE\tFOR\tDRAIN\tRESERVATION")
	if wide {
		fmt.Fprint(tw, "\tSINCE")
	}
	fmt.Fprintln(tw)
	for _, h := range s.Holders {
		reservation := "-"
		switch {
		case h.ReservedUntil == nil:
		case s.Time.Before(*h.ReservedUntil):
			reservation = "reserved until " + h.ReservedUntil.Format(time.RFC3339)
		default:
			reservation = "reserved until " + h.ReservedUntil.Format(time.RFC3339) + ", passed: to be given back"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s", h.Node, h.Group, h.State, h.Age, cmp.Or(h.Drain, "-"), reservation)
		if wide {
			fmt.Fprintf(tw, "\t%s", h.Since.Format(time.RFC3339))
		}
		fmt.Fprintln(tw)
	}
	if len(s.Holders) == 0 {
		fmt.Fprintln(tw, "(no node holds or claims a slot)")
	}
	fmt.Fprintln(tw, "\nWAITING NODE\tGROUP\tPLACE\tWAITING SINCE\tFOR\tREQUEST")
	for _, w := range s.Waiting {
		request := "not open"
		switch {
		case w.RequestOpen && w.RequestUntil != nil:
			request = "open until " + w.RequestUntil.Format(time.RFC3339)
		case w.RequestOpen:
			request = "open"
		case w.LastRequest != nil:
			request = fmt.Sprintf("not open (last %s ago)", s.Time.Sub(*w.LastRequest).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", w.Node, w.Group, w.Place, w.Since.Format(time.RFC3339), w.Age, request)
	}
	if len(s.Waiting) == 0 {
		fmt.Fprintln(tw, "(no node waits for a slot)")
	}
	if len(s.Held) > 0 {
		fmt.Fprintln(tw, "\nHELD NODE\tREASON")
		for _, h := range s.Held {
			fmt.Fprintf(tw, "%s\t%s\n", h.Node, cmp.Or(h.Reason, "-"))
		}
	}
	if len(s.Blockers) > 0 {
		fmt.Fprintln(tw, "\nBLOCKER\tSTATE\tDETAIL")
		for _, b := range s.Blockers {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Name, b.State, cmp.Or(b.Detail, "-"))
		}
	}
	if len(s.Replacements) > 0 {
		fmt.Fprintln(tw, "\nREPLACEMENT\tSTATE\tINSTANCE\tASG\tGROUP\tAGE\tWHY")
		for _, r := range s.Replacements {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.State, cmp.Or(r.Instance.ID, "-"),
				cmp.Or(r.Instance.Group, "-"), cmp.Or(r.Group, "-"), s.Time.Sub(r.Since).Round(time.Second), cmp.Or(r.Why, "-"))
		}
	}
	if s.Note != "" {
		fmt.Fprintf(tw, "\nnote: %s\n", s.Note)
	}
	return tw.Flush()
}

// writePolicyState writes where the policy comes from and, if its source is not in
// force, the error.
func writePolicyState(w io.Writer, p *policy.ConfigState) {
	switch {
	case p == nil:
	case p.Error == "":
		fmt.Fprintf(w, "policy: %s\n", p.Source)
	case p.Loaded.IsZero():
		fmt.Fprintf(w, "POLICY NOT READABLE OR INVALID: %s: %s\n", p.Source, p.Error)
	default:
		fmt.Fprintf(w, "POLICY FILE INVALID since %s, IGNORED: %s\n", p.ErrorSince.UTC().Format(time.RFC3339), p.Error)
		fmt.Fprintf(w, "policy in force: %s as read at %s (shown below)\n", p.Source, p.Loaded.UTC().Format(time.RFC3339))
	}
}

package lock

import (
	"log/slog"
	"time"

	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/reboot-manager/reboot-manager/internal/watcherr"
)

// Defaults of Options; the server's flags use them too.
const (
	// DefaultWait is Options.Wait's default: long enough that a group's queue is
	// covered by open requests at Zincati's real timing (a request every 300 to 330
	// s; docs/performance.md measures it), short of Zincati's 30-minute request
	// timeout. Behind a proxy that cuts idle requests, set --wait under its limit.
	DefaultWait = 25 * time.Minute
	// DefaultStaleClaimAge is Options.StaleClaimAge's default.
	DefaultStaleClaimAge = time.Minute
)

// Options configure a Lock. The zero value works: every field has a documented default.
type Options struct {
	// Policy decides how many nodes of a group may hold a slot, who may take one now,
	// when steady-state releases and when a silent holder goes stale. It is asked on
	// every decision, so a reloaded policy takes effect at once. Default NoPolicy{}.
	Policy Policy
	// Hooks observe every grant: promoted, told to reboot, released. Default
	// NoGrantHooks{}.
	Hooks GrantHooks
	// Wait is how long a pre-reboot request may wait for a free slot and for its drain
	// before it answers "not yet": each request waits between 3/4 of Wait and Wait, at
	// random, so that requests that began together do not all end together and leave
	// a freed slot with nobody waiting for it. Keep it well under Zincati's 30-minute
	// request timeout and under any proxy's. Default DefaultWait.
	Wait time.Duration
	// StaleClaimAge is the age after which a claim nobody refreshed (its replica
	// crashed) may be removed by anyone. Default DefaultStaleClaimAge.
	StaleClaimAge time.Duration
	// WaiterTimeout is how long after its last request a waiting node still counts
	// as waiting (Waiter.Stale); the stale loop removes the waiting marks of nodes
	// silent for longer. Default DefaultWaiterTimeout.
	WaiterTimeout time.Duration
	// ReservationTimeout is how long a slot reserved for a waiting node that had no
	// request open stays reserved before it is given back (reserve.go); negative
	// turns reservations off. Default DefaultReservationTimeout.
	ReservationTimeout time.Duration
	// ReservationGrace is how long a free slot stays free, with waiters that have no
	// request open, before it is reserved for the first of them. Default
	// DefaultReservationGrace.
	ReservationGrace time.Duration
	// Logger receives one info line per lock state change. Default: discard.
	Logger *slog.Logger
	// Clock stamps the times written on nodes (rebootmanager/since, .../released) and
	// measures ages against them. Default clock.RealClock{}.
	Clock clock.PassiveClock
	// Recorder, if set, posts Events on Nodes: refusals, reboots not observed, stale
	// holders released. Default: none.
	Recorder events.EventRecorder
	// WatchErrors, if set, records the refusals (403, 401) of the node cache's list and
	// watch, for the server's /readyz. Default: none (client-go logs them).
	WatchErrors *watcherr.Errors
}

// withDefaults returns o with every unset field at its default.
func (o Options) withDefaults() Options {
	if o.Policy == nil {
		o.Policy = NoPolicy{}
	}
	if o.Hooks == nil {
		o.Hooks = NoGrantHooks{}
	}
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	if o.StaleClaimAge <= 0 {
		o.StaleClaimAge = DefaultStaleClaimAge
	}
	if o.WaiterTimeout <= 0 {
		o.WaiterTimeout = DefaultWaiterTimeout
	}
	if o.ReservationTimeout == 0 {
		o.ReservationTimeout = DefaultReservationTimeout
	}
	if o.ReservationGrace <= 0 {
		o.ReservationGrace = DefaultReservationGrace
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return o
}

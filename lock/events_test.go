package lock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// Issue 20 item 2: refusal Events are keyed by cause, and posted again while the
// refusal lasts (Events expire after an hour; a day-long refusal must still show one).
func TestRefusalEventsByCauseAndReposted(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC))
	rec := events.NewFakeRecorder(100)
	l, err := New(fake.NewClientset(), &locktest.Drained{}, Options{Clock: clk, Recorder: rec})
	require.NoError(t, err)
	refuse := func(cause, msg string) {
		l.noteOutcome("n1", "default", &Refusal{Reason: ReasonRebootBlockedByAlert, Err: fleetlock.ErrAlertFiring, Cause: cause, Msg: msg})
	}
	posted := func() []string {
		var out []string
		for {
			select {
			case e := <-rec.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}
	refuse("NodeDown", "alert NodeDown firing")
	refuse("NodeDown", "alert NodeDown firing")
	assert.Len(t, posted(), 1, "the same cause is posted once")
	refuse("PrometheusDown", "alerts check failing: 503")
	assert.Len(t, posted(), 1, "a new cause is posted although the reason is the same")
	clk.SetTime(clk.Now().Add(RefusalEventInterval - time.Second))
	refuse("PrometheusDown", "alerts check failing: 503")
	assert.Empty(t, posted(), "not again before the interval")
	clk.SetTime(clk.Now().Add(time.Second))
	refuse("PrometheusDown", "alerts check failing: 503")
	assert.Len(t, posted(), 1, "posted again while the refusal lasts")
	l.noteOutcome("n1", "default", nil) // granted: the next refusal is news
	refuse("PrometheusDown", "alerts check failing: 503")
	assert.Len(t, posted(), 1)
}

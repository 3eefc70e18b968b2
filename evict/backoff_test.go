package evict

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBackoffCeilingDoublesUpToMax(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 8; n++ {
		got = append(got, backoffCeiling(n, time.Second, 30*time.Second))
	}
	assert.Equal(t, []time.Duration{
		time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second,
		30 * time.Second, 30 * time.Second, 30 * time.Second,
	}, got)
	assert.Equal(t, 30*time.Second, backoffCeiling(1_000_000, time.Second, 30*time.Second), "no overflow")
	assert.Equal(t, 5*time.Second, backoffCeiling(1, 5*time.Second, 5*time.Second))
}

func TestBackoffJitterStaysWithinBounds(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 6, 100} {
		ceiling := backoffCeiling(max(n, 1), time.Second, 30*time.Second)
		lo, hi := ceiling, time.Duration(0)
		for range 2000 {
			d := backoff(n, time.Second, 30*time.Second)
			require.GreaterOrEqual(t, d, ceiling/2, "failures=%d", n)
			require.LessOrEqual(t, d, ceiling, "failures=%d", n)
			lo, hi = min(lo, d), max(hi, d)
		}
		// Jitter: the waits spread over most of [ceiling/2, ceiling].
		assert.Less(t, lo, ceiling/2+ceiling/10, "failures=%d: smallest wait", n)
		assert.Greater(t, hi, ceiling-ceiling/10, "failures=%d: largest wait", n)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	assert.Equal(t, 5, o.Parallelism)
	assert.Equal(t, 10.0, o.EvictionsPerSecond)
	assert.Equal(t, time.Second, o.BackoffBase)
	assert.Equal(t, 30*time.Second, o.BackoffMax)
	assert.Equal(t, 15*time.Minute, o.Timeout)
	assert.Equal(t, KeepRefusing, o.FailurePolicy)
	assert.NotNil(t, o.Logger)
	assert.Equal(t, time.Minute, o.SkipWaitForDeleteTimeout)
	assert.Equal(t, 5*time.Minute, o.VolumeDetachTimeout)
	assert.Equal(t, 3, o.ReturningRounds)
	assert.Equal(t, 30*time.Minute, o.BlockedEventInterval)
	assert.NotNil(t, o.Clock)
	assert.Negative(t, Options{SkipWaitForDeleteTimeout: -1}.withDefaults().SkipWaitForDeleteTimeout, "negative: never skip")

	o = Options{BackoffBase: time.Minute, BackoffMax: time.Second}.withDefaults()
	assert.Equal(t, time.Minute, o.BackoffMax, "max is never below base")
}

func TestParseFailurePolicy(t *testing.T) {
	for in, want := range map[string]FailurePolicy{
		"": KeepRefusing, "KeepRefusing": KeepRefusing, "keep-refusing": KeepRefusing,
		"Release": Release, "release": Release, "FORCE": Force, " force ": Force,
	} {
		got, err := ParseFailurePolicy(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	_, err := ParseFailurePolicy("delete")
	assert.Error(t, err)
	for _, p := range []FailurePolicy{KeepRefusing, Release, Force} {
		back, err := ParseFailurePolicy(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, back)
	}
}

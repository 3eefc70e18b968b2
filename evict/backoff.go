package evict

import (
	"math/rand/v2"
	"time"
)

// backoffCeiling returns base·2^(failures-1), capped at ceiling; failures ≥ 1.
func backoffCeiling(failures int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// backoff returns how long to wait before the next attempt after failures failed
// ones: a random duration between half of backoffCeiling and all of it, so that the
// retries of many pods spread out instead of arriving together.
func backoff(failures int, base, ceiling time.Duration) time.Duration {
	d := backoffCeiling(max(failures, 1), base, ceiling)
	half := d / 2
	return d - half + rand.N(half+1)
}

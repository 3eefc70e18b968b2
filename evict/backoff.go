package evict

import (
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
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
	return min(wait.Jitter(d/2, 1), d)
}

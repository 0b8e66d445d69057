package rdb

import (
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestLimiterKeys: the limiter's state lives under RateLimitKey, inside
// certmail:, and nothing is left under redis_rate's own "rate:" prefix, so
// a scan of certmail:* finds it. It also pins redis_rate's prefix, which
// the Limiter strips.
func TestLimiterKeys(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		l := New(c).NewLimiter()
		limit := redis_rate.Limit{Rate: 2, Burst: 2, Period: time.Minute}
		for range 3 {
			_, err := l.Allow(t.Context(), "digicert", "0123456789abcdef", 1, limit)
			require.NoError(t, err)
		}
		res, err := l.Allow(t.Context(), "digicert", "0123456789abcdef", 1, limit)
		require.NoError(t, err)
		require.Zero(t, res.Allowed, "the state is kept across calls: the burst is spent")

		keys, err := c.Keys(t.Context(), "*").Result()
		require.NoError(t, err)
		require.Equal(t, []string{RateLimitKey("digicert", "0123456789abcdef", 1)}, keys)
		ttl, err := c.PTTL(t.Context(), keys[0]).Result()
		require.NoError(t, err)
		require.Positive(t, ttl, "limiter state expires")
	})
}

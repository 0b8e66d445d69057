package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestSentinelFailover: a client built from the sentinel URL writes to the
// URL's database, follows the promotion of the replica after the primary is
// SIGKILLed, still finds what was replicated, and keeps writing to the new
// primary once the old one is back as a replica (no READONLY).
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rdb, err := redisconn.Connect(ctx, s.URL(3), 5*time.Second)
	require.NoError(t, err)
	defer rdb.Close()
	require.NoError(t, rdb.Set(ctx, "before", "1", 0).Err())
	s.WaitReplicated(5 * time.Second)

	// The database of the URL is the one written (asynq.ParseRedisURI would
	// have used 0).
	first := s.Primary()
	direct := redis.NewClient(&redis.Options{Addr: first, DB: 3})
	require.Equal(t, "1", direct.Get(ctx, "before").Val())
	_ = direct.Close()

	old := s.KillPrimary()
	promoted := s.WaitPromotion(old, 30*time.Second)
	require.NotEqual(t, old, promoted)
	require.Eventually(t, func() bool { return rdb.Get(ctx, "before").Val() == "1" }, 30*time.Second, 100*time.Millisecond)
	require.NoError(t, rdb.Set(ctx, "after", "2", 0).Err())

	back := s.RestartKilled(30 * time.Second)
	require.Equal(t, old, back)
	for i := range 50 {
		require.NoError(t, rdb.Incr(ctx, "writes").Err(), "write %d after the old primary came back", i)
	}
	onNew := redis.NewClient(&redis.Options{Addr: promoted, DB: 3})
	defer onNew.Close()
	require.Equal(t, "50", onNew.Get(ctx, "writes").Val())
}

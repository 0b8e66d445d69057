package rdb

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestIdempotencyRecord: one request takes a key; others see its record;
// only the holder's pending value can be finished or released, and the
// final record carries its TTL.
func TestIdempotencyRecord(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		r := New(c)
		ctx := t.Context()
		taken, cur, err := r.TakeIdempotency(ctx, "s1", []byte("pending-a"), time.Minute)
		require.NoError(t, err)
		require.True(t, taken)
		require.Nil(t, cur)

		taken, cur, err = r.TakeIdempotency(ctx, "s1", []byte("pending-b"), time.Minute)
		require.NoError(t, err)
		require.False(t, taken)
		require.Equal(t, "pending-a", string(cur))

		ok, err := r.FinishIdempotency(ctx, "s1", []byte("pending-b"), []byte("final-b"), time.Hour)
		require.NoError(t, err)
		require.False(t, ok, "not the holder")
		require.NoError(t, r.ReleaseIdempotency(ctx, "s1", []byte("pending-b")))
		v, err := r.GetIdempotency(ctx, "s1")
		require.NoError(t, err)
		require.Equal(t, "pending-a", string(v), "another request's release leaves the record")

		ok, err = r.FinishIdempotency(ctx, "s1", []byte("pending-a"), []byte("final-a"), 24*time.Hour)
		require.NoError(t, err)
		require.True(t, ok)
		v, err = r.GetIdempotency(ctx, "s1")
		require.NoError(t, err)
		require.Equal(t, "final-a", string(v))
		ttl, err := c.PTTL(ctx, IdempotencyKey("s1")).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, 23*time.Hour)

		taken, _, err = r.TakeIdempotency(ctx, "s2", []byte("p"), time.Minute)
		require.NoError(t, err)
		require.True(t, taken)
		require.NoError(t, r.ReleaseIdempotency(ctx, "s2", []byte("p")))
		v, err = r.GetIdempotency(ctx, "s2")
		require.NoError(t, err)
		require.Nil(t, v, "released")
	})
}

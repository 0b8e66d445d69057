package rdb

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestMigrateLegacy: keys written under the untagged names of older
// versions move to their tagged names, values, histories and expiries
// intact; where this version already wrote the new name, a record stays
// and a history gets the old entries in front; the dead letters found are
// reported; a second run moves nothing. On a single Redis (one script per
// key) and on a cluster (step by step).
func TestMigrateLegacy(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		r := New(c)
		ctx := t.Context()
		const dead, live, both = "0b0e7a4e-5b1a-4c1e-9f43-5e0c3f6a1b2c", "3f1d2c4b-8a7e-4f60-b1c2-d3e4f5a6b7c8", "9a8b7c6d-1111-2222-3333-444455556666"
		require.NoError(t, c.Set(ctx, LegacyDeadKey(dead), `{"id":"dead"}`, 0).Err())
		require.NoError(t, c.RPush(ctx, LegacyAttemptsKey(dead), "a1", "a2").Err())
		require.NoError(t, c.RPush(ctx, LegacyAttemptsKey(live), "l1").Err())
		require.NoError(t, c.Expire(ctx, LegacyAttemptsKey(live), time.Hour).Err())
		require.NoError(t, c.Set(ctx, LegacyTombKey(live), "replayed", time.Hour).Err())
		require.NoError(t, c.Set(ctx, LegacyDeadClaimKey(dead), "replayed:tok", time.Minute).Err())
		// both: an old history and a new one, an old record and a new one.
		require.NoError(t, c.RPush(ctx, LegacyAttemptsKey(both), "o1", "o2").Err())
		require.NoError(t, c.RPush(ctx, AttemptsKey(both), "n1").Err())
		require.NoError(t, c.Expire(ctx, AttemptsKey(both), time.Hour).Err())
		require.NoError(t, c.Set(ctx, LegacyDeadKey(both), "old", 0).Err())
		require.NoError(t, c.Set(ctx, DeadKey(both), "new", 0).Err())

		m, err := r.MigrateLegacy(ctx)
		require.NoError(t, err)
		require.Equal(t, 7, m.Moved)
		require.ElementsMatch(t, []string{dead, both}, m.DeadIDs)

		rec, ok, err := r.DeadRecord(ctx, dead)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, `{"id":"dead"}`, rec)
		got, err := r.Attempts(ctx, dead)
		require.NoError(t, err)
		require.Equal(t, []string{"a1", "a2"}, got)
		require.Equal(t, time.Duration(-1), c.TTL(ctx, AttemptsKey(dead)).Val(), "a dead task's history keeps no expiry")
		got, err = r.Attempts(ctx, live)
		require.NoError(t, err)
		require.Equal(t, []string{"l1"}, got)
		require.InDelta(t, time.Hour.Seconds(), c.TTL(ctx, AttemptsKey(live)).Val().Seconds(), 60)
		tomb, err := r.Tombstone(ctx, live)
		require.NoError(t, err)
		require.Equal(t, "replayed", tomb)
		require.Positive(t, c.PTTL(ctx, TombKey(live)).Val(), "the tombstone keeps its expiry")
		require.Equal(t, "replayed:tok", c.Get(ctx, DeadClaimKey(dead)).Val())
		require.Positive(t, c.PTTL(ctx, DeadClaimKey(dead)).Val())
		got, err = r.Attempts(ctx, both)
		require.NoError(t, err)
		require.Equal(t, []string{"o1", "o2", "n1"}, got, "the old entries come first")
		rec, _, err = r.DeadRecord(ctx, both)
		require.NoError(t, err)
		require.Equal(t, "new", rec, "the record this version wrote stays")

		for _, k := range []string{LegacyDeadKey(dead), LegacyAttemptsKey(dead), LegacyAttemptsKey(live), LegacyTombKey(live),
			LegacyDeadClaimKey(dead), LegacyAttemptsKey(both), LegacyDeadKey(both)} {
			require.Zero(t, c.Exists(ctx, k).Val(), k)
		}
		m, err = r.MigrateLegacy(ctx)
		require.NoError(t, err)
		require.Zero(t, m.Moved)
		require.ElementsMatch(t, []string{dead, both}, m.DeadIDs)
	})
}

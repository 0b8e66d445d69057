package rdb

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// tripCounter counts round trips: one per command sent alone, one per
// pipeline.
type tripCounter struct{ n atomic.Int64 }

func (c *tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestHotPathRoundTrips: a provider call costs certmail one round trip
// before it (ClaimTask) and one after it (RecordAttempt), whatever the
// attempt's outcome.
func TestHotPathRoundTrips(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		opt, err := redis.ParseURL(b.URL)
		require.NoError(t, err)
		// Connections are set up (a warm-up claim and record) before
		// counting: a handshake (HELLO, CLIENT SETINFO) goes through the
		// hooks too, and is no cost per task.
		opt.PoolSize = 1
		c := redis.NewClient(opt)
		t.Cleanup(func() { _ = c.Close() })
		r := New(c)
		ctx := t.Context()
		limits := RecordLimits{Retention: time.Hour, StreamMax: 100, AttemptsMax: 100}
		_, _, _, err = r.ClaimTask(ctx, "warm-up", "tok", time.Minute)
		require.NoError(t, err)
		require.NoError(t, r.RecordAttempt(ctx, Attempt{TaskID: "warm-up", JSON: []byte(`{}`), Claim: "tok"}, limits))
		var trips tripCounter
		c.AddHook(&trips)
		tests := []struct {
			name string
			a    Attempt
		}{
			{"succeeded", Attempt{Outcome: "succeeded", JSON: []byte(`{}`), Succeeded: true, At: time.Now()}},
			{"retrying", Attempt{Outcome: "retrying", JSON: []byte(`{}`)}},
			{"dead", Attempt{Outcome: "dead", JSON: []byte(`{}`), Dead: []byte(`{}`), DiedAt: time.Now()}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				id := "task-" + tc.name
				before := trips.n.Load()
				state, _, _, err := r.ClaimTask(ctx, id, "tok", time.Minute)
				require.NoError(t, err)
				require.Equal(t, Claimed, state)
				require.Equal(t, int64(1), trips.n.Load()-before, "claim")

				tc.a.TaskID, tc.a.Claim = id, "tok"
				before = trips.n.Load()
				require.NoError(t, r.RecordAttempt(ctx, tc.a, limits))
				require.Equal(t, int64(1), trips.n.Load()-before, "record")

				n, err := c.Exists(ctx, InflightKey(id)).Result()
				require.NoError(t, err)
				require.Zero(t, n, "the record released the claim")
			})
		}
	})
}

// TestRecordAfterScriptCacheEmptied: right after a Redis restart (or on a
// new cluster node) the server no longer has recordScript, and the
// record's EVALSHA is refused with NOSCRIPT. The record must still be
// written whole, and the pipeline's other commands (the stream entry, the
// result) exactly once: only the script is sent again.
func TestRecordAfterScriptCacheEmptied(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		r := New(c)
		ctx := t.Context()
		limits := RecordLimits{Retention: time.Hour, StreamMax: 1000, AttemptsMax: 100}
		tests := []struct {
			name   string
			record func(Attempt) error
		}{
			{"RecordAttempt", func(a Attempt) error { return r.RecordAttempt(ctx, a, limits) }},
			{"RecordAttemptWithResult", func(a Attempt) error {
				return r.RecordAttemptWithResult(ctx, a, limits, "opensrs", []byte(`{"ok":true}`))
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				id := "flushed-" + tc.name
				state, _, _, err := r.ClaimTask(ctx, id, "tok", time.Minute)
				require.NoError(t, err)
				require.Equal(t, Claimed, state)
				streamBefore, err := c.XLen(ctx, OutcomesKey).Result()
				require.NoError(t, err)
				require.NoError(t, c.ScriptFlush(ctx).Err())

				require.NoError(t, tc.record(Attempt{TaskID: id, Outcome: "succeeded", JSON: []byte(`{"n":1}`),
					Succeeded: true, At: time.Now(), Claim: "tok"}))

				hist, err := c.LRange(ctx, AttemptsKey(id), 0, -1).Result()
				require.NoError(t, err)
				require.Equal(t, []string{`{"n":1}`}, hist, "the history holds the attempt once")
				streamAfter, err := c.XLen(ctx, OutcomesKey).Result()
				require.NoError(t, err)
				require.Equal(t, streamBefore+1, streamAfter, "one stream entry")
				require.Equal(t, int64(1), c.Exists(ctx, DoneKey(id)).Val(), "the success mark")
				require.Zero(t, c.Exists(ctx, InflightKey(id)).Val(), "the claim released")

				// The script is cached again: the next record goes by EVALSHA.
				ok, err := c.ScriptExists(ctx, recordScript.Hash()).Result()
				require.NoError(t, err)
				require.Equal(t, []bool{true}, ok)
			})
		}
	})
}

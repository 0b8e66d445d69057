package outcome

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

const testRetention = time.Hour

type storeBundle struct {
	rdb   redis.UniversalClient
	store *Store
	b     redistest.Backend
}

func setupStore(t *testing.T, b redistest.Backend) *storeBundle {
	t.Helper()
	rdb := b.Universal(t)
	return &storeBundle{rdb: rdb, store: NewStore(rdb, testRetention), b: b}
}

var t0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

func attempt(id string, n int, o Outcome) Attempt {
	return Attempt{
		TaskID: id, Type: "opensrs:resend_cert_email", Queue: "opensrs", Provider: "opensrs",
		OrderID: "123", Reference: "ref", Attempt: n, Outcome: o, Class: "transient",
		Error: fmt.Sprintf("attempt %d", n), DurationMS: 1.5, At: t0.Add(time.Duration(n) * time.Minute),
	}
}

func deadLetter(id string, at time.Time, class string) DeadLetter {
	return DeadLetter{
		ID: id, Type: "opensrs:resend_cert_email", Queue: "opensrs", Provider: "opensrs", OrderID: "123",
		Payload: Payload(`{"order_id":"123"}`), Retried: 2, MaxRetry: 2, LastError: "boom",
		LastFailedAt: at, Class: class, Source: "handler",
	}
}

func (sb *storeBundle) ttl(t *testing.T, key string) time.Duration {
	t.Helper()
	d, err := sb.rdb.TTL(t.Context(), key).Result()
	require.NoError(t, err)
	return d
}

// archive puts task ids into asynq's archive of the opensrs queue, as asynq
// does when a task dies (only the sorted set: that is what AddDead reads).
func (sb *storeBundle) archive(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		require.NoError(t, sb.rdb.ZAdd(t.Context(), asynqArchivedKey("opensrs"), redis.Z{Score: 1, Member: id}).Err())
	}
}

func (sb *storeBundle) exists(t *testing.T, key string) bool {
	t.Helper()
	n, err := sb.rdb.Exists(t.Context(), key).Result()
	require.NoError(t, err)
	return n == 1
}

func TestNewStoreDefaults(t *testing.T) {
	t.Parallel()

	s := NewStore(nil, 0)
	require.Equal(t, DefaultRetention, s.retention)
	require.Equal(t, int64(DefaultStreamMaxLen), s.streamMax)
	require.Equal(t, time.Minute, NewStore(nil, time.Minute).retention)
}

func TestStoreRecord(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		const id = "task-1"

		want := []Attempt{attempt(id, 1, Retrying), attempt(id, 2, RateLimited), attempt(id, 2, Retrying)}
		for _, a := range want {
			require.NoError(t, sb.store.Record(ctx, a, nil))
		}
		got, err := sb.store.Attempts(ctx, id)
		require.NoError(t, err)
		require.Len(t, got, len(want))
		for i := range want {
			require.True(t, want[i].At.Equal(got[i].At))
			got[i].At = want[i].At
		}
		require.Equal(t, want, got, "appended in order")

		ttl := sb.ttl(t, attemptsKey(id))
		require.Greater(t, ttl, testRetention-time.Minute, "live history expires with the retention")
		require.LessOrEqual(t, ttl, testRetention)

		_, done, err := sb.store.SucceededAt(ctx, id)
		require.NoError(t, err)
		require.False(t, done)

		// The final attempt kills the task: the history is kept for good.
		d := deadLetter(id, t0.Add(time.Hour), "retries_exhausted")
		require.NoError(t, sb.store.Record(ctx, attempt(id, 3, Dead), &d))
		require.Equal(t, time.Duration(-1), sb.ttl(t, attemptsKey(id)), "dead history persists")
		require.Equal(t, time.Duration(-1), sb.ttl(t, deadKey(id)))

		got, err = sb.store.Attempts(ctx, id)
		require.NoError(t, err)
		require.Len(t, got, 4)
		require.Equal(t, Dead, got[3].Outcome)

		gotDead, ok, err := sb.store.DeadLetter(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, d, gotDead)

		n, err := sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)

		if b.Mini != nil {
			b.Mini.FastForward(2 * testRetention)
			got, err = sb.store.Attempts(ctx, id)
			require.NoError(t, err)
			require.Len(t, got, 4, "history of a dead task outlives the retention")
		}
	})
}

func TestStoreRecordExpires(t *testing.T) {
	t.Parallel()
	sb := setupStore(t, redistest.Mini(t))
	ctx := t.Context()

	require.NoError(t, sb.store.Record(ctx, attempt("live", 1, Retrying), nil))
	require.NoError(t, sb.store.Record(ctx, attempt("ok", 1, Succeeded), nil))
	sb.b.Mini.FastForward(testRetention + time.Second)

	for _, id := range []string{"live", "ok"} {
		got, err := sb.store.Attempts(ctx, id)
		require.NoError(t, err)
		require.Empty(t, got)
	}
	_, done, err := sb.store.SucceededAt(ctx, "ok")
	require.NoError(t, err)
	require.False(t, done, "success mark expires with the retention")
}

func TestStoreRecordAfterDeadRevives(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		next Outcome
	}{
		{"replay retrying", Retrying},
		{"replay rate limited", RateLimited},
		{"replay succeeded", Succeeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				sb := setupStore(t, b)
				ctx := t.Context()
				const id = "replayed"

				d := deadLetter(id, t0, "permanent")
				require.NoError(t, sb.store.Record(ctx, attempt(id, 1, Dead), &d))
				other := deadLetter("other", t0.Add(time.Second), "permanent")
				require.NoError(t, sb.store.Record(ctx, attempt("other", 1, Dead), &other))

				// Replayed from the dashboard with the same ID: it runs again.
				require.NoError(t, sb.store.Record(ctx, attempt(id, 2, tc.next), nil))

				_, ok, err := sb.store.DeadLetter(ctx, id)
				require.NoError(t, err)
				require.False(t, ok, "no longer dead")
				n, err := sb.store.CountDead(ctx)
				require.NoError(t, err)
				require.Equal(t, int64(1), n)
				all, err := sb.store.DeadLetters(ctx)
				require.NoError(t, err)
				require.Equal(t, []DeadLetter{other}, all)

				got, err := sb.store.Attempts(ctx, id)
				require.NoError(t, err)
				require.Len(t, got, 2, "history kept")
				ttl := sb.ttl(t, attemptsKey(id))
				require.Greater(t, ttl, time.Duration(0), "history expires again")
			})
		})
	}
}

func TestStoreSucceededAt(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		_, done, err := sb.store.SucceededAt(ctx, "nope")
		require.NoError(t, err)
		require.False(t, done)

		a := attempt("s", 1, Succeeded)
		a.At = time.Date(2026, 5, 1, 10, 0, 0, 123456789, time.FixedZone("CEST", 2*3600))
		require.NoError(t, sb.store.Record(ctx, a, nil))

		at, done, err := sb.store.SucceededAt(ctx, "s")
		require.NoError(t, err)
		require.True(t, done)
		require.True(t, a.At.Equal(at), "got %v", at)
		ttl := sb.ttl(t, doneKey("s"))
		require.Greater(t, ttl, testRetention-time.Minute)
		require.LessOrEqual(t, ttl, testRetention)
	})
}

func TestStoreAddDead(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		// A live history, then the reconciler finds the task in the archive.
		require.NoError(t, sb.store.Record(ctx, attempt("r", 1, Retrying), nil))
		sb.archive(t, "r", "h")
		first := deadLetter("r", t0, "unknown")
		first.Source = "reconciled"
		added, err := sb.store.AddDead(ctx, first)
		require.NoError(t, err)
		require.True(t, added)
		require.Equal(t, time.Duration(-1), sb.ttl(t, attemptsKey("r")), "history persists")

		second := deadLetter("r", t0.Add(time.Hour), "permanent")
		added, err = sb.store.AddDead(ctx, second)
		require.NoError(t, err)
		require.False(t, added, "NX: the first record wins")

		got, ok, err := sb.store.DeadLetter(ctx, "r")
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, first, got)
		score, err := sb.rdb.ZScore(ctx, deadIndexKey, "r").Result()
		require.NoError(t, err)
		require.Equal(t, float64(t0.UnixMilli()), score, "index keeps the first time of death")

		n, err := sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)

		// A handler-recorded death is not overwritten either.
		hd := deadLetter("h", t0, "permanent")
		require.NoError(t, sb.store.Record(ctx, attempt("h", 1, Dead), &hd))
		added, err = sb.store.AddDead(ctx, deadLetter("h", t0, "unknown"))
		require.NoError(t, err)
		require.False(t, added)
		got, _, err = sb.store.DeadLetter(ctx, "h")
		require.NoError(t, err)
		require.Equal(t, "permanent", got.Class)

		has, err := sb.store.HasDead(ctx, []string{"r", "x", "h"})
		require.NoError(t, err)
		require.Equal(t, []bool{true, false, true}, has)
	})
}

func TestStoreDeadLettersAll(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		const total = 2500

		// Written in shuffled order, straight into Redis in one pipeline.
		order := rand.Perm(total)
		_, err := sb.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range order {
				d := deadLetter(fmt.Sprintf("dead-%04d", i), t0.Add(time.Duration(i)*time.Second), "permanent")
				b, err := json.Marshal(d)
				if err != nil {
					return err
				}
				p.Set(ctx, deadKey(d.ID), b, 0)
				p.ZAdd(ctx, deadIndexKey, redis.Z{Score: float64(d.LastFailedAt.UnixMilli()), Member: d.ID})
			}
			return nil
		})
		require.NoError(t, err)

		all, err := sb.store.DeadLetters(ctx)
		require.NoError(t, err)
		require.Len(t, all, total, "no paging or cap")
		for i, d := range all {
			require.Equal(t, fmt.Sprintf("dead-%04d", i), d.ID, "oldest death first")
			require.True(t, t0.Add(time.Duration(i)*time.Second).Equal(d.LastFailedAt))
		}

		n, err := sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(total), n)

		ids := make([]string, total)
		for i := range ids {
			ids[i] = fmt.Sprintf("dead-%04d", i)
		}
		has, err := sb.store.HasDead(ctx, append(ids, "missing"))
		require.NoError(t, err)
		require.Len(t, has, total+1)
		require.NotContains(t, has[:total], false)
		require.False(t, has[total])

		// Delete across chunk boundaries.
		require.NoError(t, sb.store.DeleteDead(ctx, ids[:2200]...))
		all, err = sb.store.DeadLetters(ctx)
		require.NoError(t, err)
		require.Len(t, all, total-2200)
		require.Equal(t, "dead-2200", all[0].ID)
		n, err = sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(total-2200), n)
	})
}

func TestStoreDeadLettersSkipsDangling(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		sb.archive(t, "a", "b", "c")
		for i, id := range []string{"a", "b", "c"} {
			d := deadLetter(id, t0.Add(time.Duration(i)*time.Minute), "permanent")
			added, err := sb.store.AddDead(ctx, d)
			require.NoError(t, err)
			require.True(t, added)
		}
		// Record deleted concurrently, index entry still there.
		require.NoError(t, sb.rdb.Del(ctx, deadKey("b")).Err())

		all, err := sb.store.DeadLetters(ctx)
		require.NoError(t, err)
		require.Len(t, all, 2)
		require.Equal(t, "a", all[0].ID)
		require.Equal(t, "c", all[1].ID)
	})
}

func TestStoreDeleteDead(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		for _, id := range []string{"x", "y"} {
			d := deadLetter(id, t0, "permanent")
			require.NoError(t, sb.store.Record(ctx, attempt(id, 1, Dead), &d))
		}
		require.NoError(t, sb.store.DeleteDead(ctx, "x", "never-existed"))
		require.NoError(t, sb.store.DeleteDead(ctx)) // no ids: no-op

		_, ok, err := sb.store.DeadLetter(ctx, "x")
		require.NoError(t, err)
		require.False(t, ok)
		_, ok, err = sb.store.DeadLetter(ctx, "y")
		require.NoError(t, err)
		require.True(t, ok)

		n, err := sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)

		// The history of a deleted dead letter is kept for the retention.
		got, err := sb.store.Attempts(ctx, "x")
		require.NoError(t, err)
		require.Len(t, got, 1)
		ttl := sb.ttl(t, attemptsKey("x"))
		require.Greater(t, ttl, testRetention-time.Minute)
		require.LessOrEqual(t, ttl, testRetention)
		require.Equal(t, time.Duration(-1), sb.ttl(t, attemptsKey("y")))
	})
}

func TestStoreCountDeadEmpty(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		n, err := sb.store.CountDead(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
		all, err := sb.store.DeadLetters(t.Context())
		require.NoError(t, err)
		require.Empty(t, all)
		_, ok, err := sb.store.DeadLetter(t.Context(), "none")
		require.NoError(t, err)
		require.False(t, ok)
		got, err := sb.store.Attempts(t.Context(), "none")
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func TestStoreStream(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		d := deadLetter("s2", t0, "permanent")
		records := []struct {
			a    Attempt
			dead *DeadLetter
		}{
			{attempt("s1", 1, Retrying), nil},
			{attempt("s1", 2, Succeeded), nil},
			{attempt("s2", 1, Dead), &d},
		}
		for _, r := range records {
			require.NoError(t, sb.store.Record(ctx, r.a, r.dead))
		}
		// AddDead and DeleteDead do not write to the stream.
		sb.archive(t, "s3")
		_, err := sb.store.AddDead(ctx, deadLetter("s3", t0, "unknown"))
		require.NoError(t, err)
		require.NoError(t, sb.store.DeleteDead(ctx, "s3"))

		msgs, err := sb.rdb.XRange(ctx, streamKey, "-", "+").Result()
		require.NoError(t, err)
		require.Len(t, msgs, len(records), "one entry per Record")
		for i, m := range msgs {
			require.Equal(t, records[i].a.TaskID, m.Values["task_id"])
			require.Equal(t, string(records[i].a.Outcome), m.Values["outcome"])
			raw, ok := m.Values["attempt"].(string)
			require.True(t, ok)
			var a Attempt
			require.NoError(t, json.Unmarshal([]byte(raw), &a))
			require.Equal(t, records[i].a.Attempt, a.Attempt)
			require.Equal(t, records[i].a.Error, a.Error)
		}
	})
}

func TestStoreStreamCapped(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		sb.store.streamMax = 10
		for i := range 300 {
			require.NoError(t, sb.store.Record(t.Context(), attempt(fmt.Sprintf("c%d", i), 1, Retrying), nil))
		}
		n, err := sb.rdb.XLen(t.Context(), streamKey).Result()
		require.NoError(t, err)
		// MAXLEN ~ trims whole macro nodes on Redis (100 entries each by default).
		require.Less(t, n, int64(300))
		require.GreaterOrEqual(t, n, int64(10))
	})
}

func TestStoreClaim(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		state, _, _, err := sb.store.Claim(ctx, "c1", "tok-a", 30*time.Second)
		require.NoError(t, err)
		require.Equal(t, Claimed, state)

		// A second delivery of the same task sees the first one in flight.
		state, _, left, err := sb.store.Claim(ctx, "c1", "tok-b", 30*time.Second)
		require.NoError(t, err)
		require.Equal(t, InFlight, state)
		require.Greater(t, left, 20*time.Second)
		require.LessOrEqual(t, left, 30*time.Second)

		// Recording with a stale token does not free the claim ...
		stale := attempt("c1", 1, Retrying)
		stale.Claim = "tok-b"
		require.NoError(t, sb.store.Record(ctx, stale, nil))
		require.True(t, sb.exists(t, inflightKey("c1")))

		// ... recording with the owner's token does.
		a := attempt("c1", 1, Retrying)
		a.Claim = "tok-a"
		require.NoError(t, sb.store.Record(ctx, a, nil))
		require.False(t, sb.exists(t, inflightKey("c1")))

		state, _, _, err = sb.store.Claim(ctx, "c1", "tok-b", 30*time.Second)
		require.NoError(t, err)
		require.Equal(t, Claimed, state)
		ok := attempt("c1", 2, Succeeded)
		ok.Claim = "tok-b"
		require.NoError(t, sb.store.Record(ctx, ok, nil))

		// After a success, every later delivery is told so.
		state, at, _, err := sb.store.Claim(ctx, "c1", "tok-c", 30*time.Second)
		require.NoError(t, err)
		require.Equal(t, AlreadySucceeded, state)
		require.True(t, at.Equal(ok.At), "success time %v, want %v", at, ok.At)
		// That claim was taken before the mark was read (rdb.ClaimTask);
		// the suppressed attempt's record, which carries its token, drops it.
		dup := attempt("c1", 3, Succeeded)
		dup.Claim = "tok-c"
		require.NoError(t, sb.store.Record(ctx, dup, nil))
		require.False(t, sb.exists(t, inflightKey("c1")), "no claim left once succeeded")
	})
}

func TestStoreClaimExpires(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		state, _, _, err := sb.store.Claim(ctx, "c2", "crashed", 300*time.Millisecond)
		require.NoError(t, err)
		require.Equal(t, Claimed, state)
		// The delivery that claimed crashed: its claim lapses on its own.
		if b.Mini != nil {
			b.Mini.FastForward(time.Second)
		} else {
			time.Sleep(400 * time.Millisecond)
		}
		state, _, _, err = sb.store.Claim(ctx, "c2", "next", time.Second)
		require.NoError(t, err)
		require.Equal(t, Claimed, state)
	})
}

// A task that bounces off a rate limit for days records an attempt per
// bounce without spending its budget; its history must stay bounded.
func TestStoreRecordCapsAttempts(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		const id = "bouncer"
		const n = MaxAttemptsKept + 25
		for i := range n {
			a := attempt(id, 1, RateLimited)
			a.Error = fmt.Sprintf("bounce %d", i)
			require.NoError(t, sb.store.Record(ctx, a, nil))
		}
		got, err := sb.store.Attempts(ctx, id)
		require.NoError(t, err)
		require.Len(t, got, MaxAttemptsKept)
		require.Equal(t, fmt.Sprintf("bounce %d", n-MaxAttemptsKept), got[0].Error, "the oldest are dropped")
		require.Equal(t, fmt.Sprintf("bounce %d", n-1), got[MaxAttemptsKept-1].Error, "the newest are kept")
	})
}

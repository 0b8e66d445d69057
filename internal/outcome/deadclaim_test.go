package outcome

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

var succ = func(id string) Successor { return Successor{Queue: "opensrs", ID: "next-" + id} }

// TestStoreClaimDeadOneWinnerPerID: many callers race claim-then-finish on
// the same dead letters; each dead letter is won, and finished, exactly once.
func TestStoreClaimDeadOneWinnerPerID(t *testing.T) {
	t.Parallel()
	const (
		letters = 200
		racers  = 8
	)
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		ids := make([]string, letters)
		for i := range ids {
			ids[i] = fmt.Sprintf("d%03d", i)
			d := deadLetter(ids[i], t0, "permanent")
			require.NoError(t, sb.store.Record(ctx, attempt(ids[i], 1, Dead), &d))
		}

		var (
			mu       sync.Mutex
			claimed  = map[string]int{}
			finished = map[string]int{}
			wg       sync.WaitGroup
		)
		for r := range racers {
			op := []DeadOp{OpReplay, OpDelete}[r%2]
			wg.Go(func() {
				token := fmt.Sprintf("racer-%d", r)
				for _, id := range ids {
					c, err := sb.store.ClaimDead(ctx, id, op, token, time.Minute, succ(id))
					if !assertNoError(t, err) || !c.Won {
						continue
					}
					ok, err := sb.store.FinishDead(ctx, id, op, token, op)
					if !assertNoError(t, err) {
						continue
					}
					mu.Lock()
					claimed[id]++
					if ok {
						finished[id]++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		for _, id := range ids {
			require.Equal(t, 1, claimed[id], "claims of %s", id)
			require.Equal(t, 1, finished[id], "finishes of %s", id)
		}
		n, err := sb.store.CountDead(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

// assertNoError reports an error from a goroutine without FailNow.
func assertNoError(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

func TestStoreClaimDeadLifecycle(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		const id = "x"
		d := deadLetter(id, t0, "permanent")
		require.NoError(t, sb.store.Record(ctx, attempt(id, 1, Dead), &d))
		sb.archive(t, id)

		c, err := sb.store.ClaimDead(ctx, id, OpReplay, "a", time.Minute, succ(id))
		require.NoError(t, err)
		require.True(t, c.Won)
		require.Equal(t, d, c.Record, "the record as it is now")
		require.False(t, c.SuccessorSeen)
		left := sb.ttl(t, deadClaimKey(id))
		require.Greater(t, left, 50*time.Second)

		// Held: another caller is told by whom, and cannot renew or finish.
		c, err = sb.store.ClaimDead(ctx, id, OpDelete, "b", time.Minute, succ(id))
		require.NoError(t, err)
		require.Equal(t, DeadClaim{HeldBy: OpReplay}, c)
		ok, err := sb.store.RenewDead(ctx, id, OpDelete, "b", time.Minute)
		require.NoError(t, err)
		require.False(t, ok)
		ok, err = sb.store.FinishDead(ctx, id, OpDelete, "b", OpDelete)
		require.NoError(t, err)
		require.False(t, ok)
		require.NoError(t, sb.store.ReleaseDead(ctx, id, OpDelete, "b"))
		require.True(t, sb.exists(t, deadClaimKey(id)), "a stranger's release frees nothing")

		// Released: the next caller wins; the record is untouched.
		require.NoError(t, sb.store.ReleaseDead(ctx, id, OpReplay, "a"))
		require.True(t, sb.exists(t, deadKey(id)))
		c, err = sb.store.ClaimDead(ctx, id, OpDelete, "b", time.Minute, succ(id))
		require.NoError(t, err)
		require.True(t, c.Won)
		ok, err = sb.store.RenewDead(ctx, id, OpDelete, "b", time.Minute)
		require.NoError(t, err)
		require.True(t, ok)

		// The sweep does not add a second record while the first exists.
		added, err := sb.store.AddDead(ctx, deadLetter(id, t0, "unknown"))
		require.NoError(t, err)
		require.False(t, added)

		ok, err = sb.store.FinishDead(ctx, id, OpDelete, "b", OpDelete)
		require.NoError(t, err)
		require.True(t, ok)
		require.False(t, sb.exists(t, deadKey(id)))
		// Run again, as go-redis does after a reply timed out: still ours.
		ok, err = sb.store.FinishDead(ctx, id, OpDelete, "b", OpDelete)
		require.NoError(t, err)
		require.True(t, ok, "a repeated finish is the same finish")
		ok, err = sb.store.FinishDead(ctx, id, OpReplay, "a", OpReplay)
		require.NoError(t, err)
		require.False(t, ok, "but not someone else's")
		ok, err = sb.store.RenewDead(ctx, id, OpDelete, "b", time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "nothing left to renew")
		score, err := sb.rdb.ZScore(ctx, deadIndexKey, id).Result()
		require.ErrorIs(t, err, redis.Nil, "index entry gone, score %v", score)
		tomb, err := sb.store.Tombstone(ctx, id)
		require.NoError(t, err)
		require.Equal(t, OpDelete, tomb)
		ttl := sb.ttl(t, tombKey(id))
		require.Greater(t, ttl, TombstoneTTL-time.Minute)
		require.LessOrEqual(t, ttl, TombstoneTTL)
		ttl = sb.ttl(t, attemptsKey(id))
		require.Greater(t, ttl, time.Duration(0), "history expires with the retention")
		require.LessOrEqual(t, ttl, testRetention)

		// Gone for good: a late caller learns what happened, and the sweep
		// does not bring it back although asynq still archives the task.
		c, err = sb.store.ClaimDead(ctx, id, OpReplay, "c", time.Minute, succ(id))
		require.NoError(t, err)
		require.Equal(t, DeadClaim{Tombstone: OpDelete}, c)
		added, err = sb.store.AddDead(ctx, deadLetter(id, t0, "unknown"))
		require.NoError(t, err)
		require.False(t, added, "tombstoned")
		require.False(t, sb.exists(t, deadKey(id)))

		c, err = sb.store.ClaimDead(ctx, "never", OpReplay, "c", time.Minute, succ("never"))
		require.NoError(t, err)
		require.Equal(t, DeadClaim{}, c)
		tomb, err = sb.store.Tombstone(ctx, "never")
		require.NoError(t, err)
		require.Empty(t, tomb)
	})
}

func TestStoreClaimDeadLeaseExpires(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		const id = "crashed"
		d := deadLetter(id, t0, "permanent")
		require.NoError(t, sb.store.Record(ctx, attempt(id, 1, Dead), &d))

		c, err := sb.store.ClaimDead(ctx, id, OpReplay, "dies", 300*time.Millisecond, succ(id))
		require.NoError(t, err)
		require.True(t, c.Won)
		// Its owner crashed: the claim lapses on its own and the dead
		// letter is still there for the next caller.
		if b.Mini != nil {
			b.Mini.FastForward(time.Second)
		}
		require.Eventually(t, func() bool {
			c, err = sb.store.ClaimDead(ctx, id, OpReplay, "next", time.Minute, succ(id))
			return err == nil && c.Won
		}, 10*time.Second, 50*time.Millisecond)
		ok, err := sb.store.FinishDead(ctx, id, OpReplay, "dies", OpReplay)
		require.NoError(t, err)
		require.False(t, ok, "the crashed owner no longer finishes")
		ok, err = sb.store.FinishDead(ctx, id, OpReplay, "next", OpReplay)
		require.NoError(t, err)
		require.True(t, ok)
	})
}

// TestStoreClaimDeadLapsedUntaken: a claim that lapsed while its owner
// stalled, with nobody taking it meanwhile, can still be renewed and
// finished by that owner; once another caller took it, not any more.
func TestStoreClaimDeadLapsedUntaken(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()
		for _, id := range []string{"renewed", "finished"} {
			d := deadLetter(id, t0, "permanent")
			require.NoError(t, sb.store.Record(ctx, attempt(id, 1, Dead), &d))
			c, err := sb.store.ClaimDead(ctx, id, OpReplay, "slow", 200*time.Millisecond, succ(id))
			require.NoError(t, err)
			require.True(t, c.Won)
		}
		if b.Mini != nil {
			b.Mini.FastForward(time.Second)
		}
		require.Eventually(t, func() bool {
			// One EXISTS per key: the two IDs are in different cluster slots.
			a, err1 := sb.rdb.Exists(ctx, deadClaimKey("renewed")).Result()
			b, err2 := sb.rdb.Exists(ctx, deadClaimKey("finished")).Result()
			return err1 == nil && err2 == nil && a+b == 0
		}, 10*time.Second, 50*time.Millisecond, "claims lapse")

		ok, err := sb.store.RenewDead(ctx, "renewed", OpReplay, "slow", time.Minute)
		require.NoError(t, err)
		require.True(t, ok, "lapsed, untaken: taken again")
		c, err := sb.store.ClaimDead(ctx, "renewed", OpDelete, "other", time.Minute, succ("renewed"))
		require.NoError(t, err)
		require.Equal(t, DeadClaim{HeldBy: OpReplay}, c)

		ok, err = sb.store.FinishDead(ctx, "finished", OpReplay, "slow", OpReplay)
		require.NoError(t, err)
		require.True(t, ok, "lapsed, untaken: finished")
		ok, err = sb.store.FinishDead(ctx, "finished", OpReplay, "slow", OpReplay)
		require.NoError(t, err)
		require.True(t, ok, "a repeated finish is the same finish")
		ok, err = sb.store.FinishDead(ctx, "finished", OpDelete, "other", OpDelete)
		require.NoError(t, err)
		require.False(t, ok, "finished by the slow one")
		ok, err = sb.store.RenewDead(ctx, "finished", OpReplay, "slow", time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "nothing left to renew")
	})
}

func TestStoreClaimDeadSuccessorSeen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		trace func(sb *storeBundle, t *testing.T, s Successor)
	}{
		{"asynq holds it", func(sb *storeBundle, t *testing.T, s Successor) {
			require.NoError(t, sb.rdb.HSet(t.Context(), asynqTaskKey(s.Queue, s.ID), "state", "pending").Err())
		}},
		{"it has run", func(sb *storeBundle, t *testing.T, s Successor) {
			require.NoError(t, sb.store.Record(t.Context(), attempt(s.ID, 1, Retrying), nil))
		}},
		{"it succeeded", func(sb *storeBundle, t *testing.T, s Successor) {
			require.NoError(t, sb.rdb.Set(t.Context(), doneKey(s.ID), "x", 0).Err())
		}},
		{"it is dead", func(sb *storeBundle, t *testing.T, s Successor) {
			require.NoError(t, sb.rdb.Set(t.Context(), deadKey(s.ID), "{}", 0).Err())
		}},
		{"it was replayed in turn", func(sb *storeBundle, t *testing.T, s Successor) {
			require.NoError(t, sb.rdb.Set(t.Context(), tombKey(s.ID), "replayed", 0).Err())
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				sb := setupStore(t, b)
				ctx := t.Context()
				d := deadLetter("x", t0, "permanent")
				require.NoError(t, sb.store.Record(ctx, attempt("x", 1, Dead), &d))
				tc.trace(sb, t, succ("x"))
				c, err := sb.store.ClaimDead(ctx, "x", OpReplay, "a", time.Minute, succ("x"))
				require.NoError(t, err)
				require.True(t, c.Won)
				require.True(t, c.SuccessorSeen)
			})
		})
	}
}

func TestStoreAddDeadOnlyWhileArchived(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		sb := setupStore(t, b)
		ctx := t.Context()

		// Listed by a sweep, then taken out of the archive (replayed,
		// deleted, run again) before the sweep writes: nothing is added.
		added, err := sb.store.AddDead(ctx, deadLetter("gone", t0, "unknown"))
		require.NoError(t, err)
		require.False(t, added)
		require.False(t, sb.exists(t, deadKey("gone")))

		// Archived in another queue: not this one's task.
		require.NoError(t, sb.rdb.ZAdd(ctx, asynqArchivedKey("digicert"), redis.Z{Score: 1, Member: "elsewhere"}).Err())
		added, err = sb.store.AddDead(ctx, deadLetter("elsewhere", t0, "unknown"))
		require.NoError(t, err)
		require.False(t, added)

		sb.archive(t, "here")
		added, err = sb.store.AddDead(ctx, deadLetter("here", t0, "unknown"))
		require.NoError(t, err)
		require.True(t, added)
	})
}

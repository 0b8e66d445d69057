package rdb

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// redirects records every reply of a cluster node that says a command was
// sent to the wrong node or across slots.
type redirects struct {
	mu   sync.Mutex
	seen []string
}

func (r *redirects) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *redirects) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		r.note(cmd, err) // the client sets cmd's error after the hooks
		return err
	}
}

func (r *redirects) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			r.note(c, c.Err())
		}
		return err
	}
}

func (r *redirects) note(cmd redis.Cmder, err error) {
	if err != nil {
		msg := err.Error()
		for _, bad := range []string{"CROSSSLOT", "MOVED", "ASK", "TRYAGAIN"} {
			if strings.HasPrefix(msg, bad) {
				r.mu.Lock()
				r.seen = append(r.seen, fmt.Sprintf("%v: %s", cmd.Args(), msg))
				r.mu.Unlock()
			}
		}
	}
}

// clusterClient is a cluster client on c whose every node connection
// records redirections and cross-slot refusals in the returned redirects.
func clusterClient(t *testing.T, c *redistest.Cluster) (*redis.ClusterClient, *redirects) {
	rec := &redirects{}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs,
		NewClient: func(o *redis.Options) *redis.Client {
			n := redis.NewClient(o)
			n.AddHook(rec)
			return n
		}})
	t.Cleanup(func() { _ = cc.Close() })
	require.NoError(t, cc.ForEachShard(t.Context(), func(ctx context.Context, n *redis.Client) error {
		return n.Ping(ctx).Err()
	}))
	return cc, rec
}

// TestClusterScripts runs every script, pipeline and multi-key command of
// the layer on a real 3-master Redis Cluster, for task IDs and credentials
// whose keys land on every node, and checks that each does its job and that
// no node ever answered CROSSSLOT, MOVED, ASK or TRYAGAIN.
func TestClusterScripts(t *testing.T) {
	t.Parallel()
	cl := redistest.NewCluster(t)
	cc, rec := clusterClient(t, cl)
	r := New(cc)
	ctx := t.Context()

	ids := make([]string, 12)
	nodes := map[string]bool{}
	for i := range ids {
		ids[i] = uuid.NewString()
		addr, err := masterOf(ctx, cc, DeadKey(ids[i]))
		require.NoError(t, err)
		nodes[addr] = true
	}
	require.Len(t, nodes, redistest.ClusterMasters, "12 task IDs land on every master")

	limits := RecordLimits{Retention: time.Hour, StreamMax: 100, AttemptsMax: 100}
	died := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	for i, id := range ids {
		t.Run("task "+id[:8], func(t *testing.T) {
			succ := uuid.NewString()
			st, _, _, err := r.ClaimTask(ctx, id, "tok", time.Minute)
			require.NoError(t, err)
			require.Equal(t, Claimed, st)
			st, _, _, err = r.ClaimTask(ctx, id, "other", time.Minute)
			require.NoError(t, err)
			require.Equal(t, InFlight, st)
			// The attempt that kills the task: one pipeline over the task's
			// slot, the index and the stream.
			require.NoError(t, r.RecordAttempt(ctx, Attempt{TaskID: id, Outcome: "dead", JSON: []byte(`{"n":1}`),
				Dead: []byte(`{"id":"` + id + `"}`), DiedAt: died, Claim: "tok"}, limits))
			att, err := r.Attempts(ctx, id)
			require.NoError(t, err)
			require.Len(t, att, 1)
			rec, ok, err := r.DeadRecord(ctx, id)
			require.NoError(t, err)
			require.True(t, ok)
			require.Contains(t, rec, id)

			// The sweep: no second record, then one added for an archived
			// task without a record.
			other := uuid.NewString()
			require.NoError(t, cc.ZAdd(ctx, AsynqArchivedKey("opensrs"), redis.Z{Score: 1, Member: other}).Err())
			added, err := r.AddDead(ctx, id, "opensrs", []byte(`{}`), died)
			require.NoError(t, err)
			require.False(t, added, "a record exists")
			added, err = r.AddDead(ctx, other, "opensrs", []byte(`{"id":"`+other+`"}`), died)
			require.NoError(t, err)
			require.True(t, added)
			added, err = r.AddDead(ctx, uuid.NewString(), "opensrs", []byte(`{}`), died)
			require.NoError(t, err)
			require.False(t, added, "not archived")

			// Claim, renew, release, claim again, finish: replay of one letter.
			c, err := r.ClaimDead(ctx, id, "replayed:a", time.Minute, "opensrs", succ)
			require.NoError(t, err)
			require.True(t, c.Won)
			require.False(t, c.SuccessorSeen)
			c, err = r.ClaimDead(ctx, id, "deleted:b", time.Minute, "opensrs", succ)
			require.NoError(t, err)
			require.Equal(t, "replayed:a", c.Held)
			held, err := r.RenewDead(ctx, id, "replayed:a", time.Minute)
			require.NoError(t, err)
			require.True(t, held)
			require.NoError(t, r.ReleaseDead(ctx, id, "replayed:a"))
			if i%2 == 0 { // the successor exists: the claim says so
				require.NoError(t, cc.HSet(ctx, AsynqTaskKey("opensrs", succ), "state", "pending").Err())
			} else {
				require.NoError(t, cc.RPush(ctx, AttemptsKey(succ), "{}").Err())
			}
			c, err = r.ClaimDead(ctx, id, "replayed:c", time.Minute, "opensrs", succ)
			require.NoError(t, err)
			require.True(t, c.Won)
			require.True(t, c.SuccessorSeen)
			done, err := r.FinishDead(ctx, id, "replayed:c", "replayed", time.Hour, time.Hour)
			require.NoError(t, err)
			require.True(t, done)
			done, err = r.FinishDead(ctx, id, "replayed:c", "replayed", time.Hour, time.Hour)
			require.NoError(t, err)
			require.True(t, done, "a repeated finish answers as the first")
			tomb, err := r.Tombstone(ctx, id)
			require.NoError(t, err)
			require.Equal(t, "replayed", tomb)
			c, err = r.ClaimDead(ctx, id, "deleted:d", time.Minute, "opensrs", succ)
			require.NoError(t, err)
			require.Equal(t, DeadClaimReply{Tombstone: "replayed"}, c)
			indexed, err := r.DeadIndexed(ctx, []string{id, other})
			require.NoError(t, err)
			require.Equal(t, []bool{false, true}, indexed)

			// A success: the mark, then a claim that sees it.
			require.NoError(t, r.RecordAttempt(ctx, Attempt{TaskID: succ, Outcome: "succeeded", JSON: []byte(`{}`),
				Succeeded: true, At: time.Now()}, limits))
			at, ok, err := r.SucceededAt(ctx, succ)
			require.NoError(t, err)
			require.True(t, ok)
			require.False(t, at.IsZero())
			st, _, _, err = r.ClaimTask(ctx, succ, "tok", time.Minute)
			require.NoError(t, err)
			require.Equal(t, AlreadySucceeded, st)
			exists, err := r.TaskExists(ctx, "opensrs", succ)
			require.NoError(t, err)
			require.Equal(t, i%2 == 0, exists)
		})
	}

	t.Run("many letters", func(t *testing.T) {
		all, err := r.DeadIDs(ctx)
		require.NoError(t, err)
		require.Len(t, all, len(ids), "the sweep's records")
		before, err := r.DeadIDsBefore(ctx, time.Now())
		require.NoError(t, err)
		require.ElementsMatch(t, all, before)
		n, err := r.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(len(ids)), n)
		recs, ok, err := r.DeadRecords(ctx, append(all, uuid.NewString()))
		require.NoError(t, err)
		require.Equal(t, len(all)+1, len(recs))
		require.False(t, ok[len(all)])
		for i := range all {
			require.True(t, ok[i])
			require.Contains(t, recs[i], all[i])
		}
		has, err := r.HasDead(ctx, all)
		require.NoError(t, err)
		require.NotContains(t, has, false)
		// An index entry of a finished letter (its finish cut short) goes;
		// one of a live record stays.
		require.NoError(t, r.IndexDead(ctx, ids[0], died))
		dropped, err := r.DropDeadIndex(ctx, []string{ids[0], all[0]})
		require.NoError(t, err)
		require.Equal(t, []string{ids[0]}, dropped)
		require.NoError(t, r.DeleteDead(ctx, time.Hour, all...))
		n, err = r.CountDead(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("dedup", func(t *testing.T) {
		for i := range 6 {
			h := fmt.Sprintf("%064x", i)
			ok, err := r.SetDedupMark(ctx, h, "a 1", time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, r.NoteDedupFailed(ctx, h, "a", time.Minute))
			st, err := r.DedupMark(ctx, h)
			require.NoError(t, err)
			require.Equal(t, "a", st.Failed)
			require.NoError(t, st.TTLErr)
			ok, err = r.TakeOverDedupMark(ctx, h, "a 1", "b 2", time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, r.RepointDedupMark(ctx, h, "b 2", "c 3"))
			v, err := r.GetDedupMark(ctx, h)
			require.NoError(t, err)
			require.Equal(t, "c 3", v)
			require.NoError(t, r.ReleaseDedupMark(ctx, h, "c 3"))
		}
	})

	t.Run("dedup marks pipelined", func(t *testing.T) {
		hashes, values := make([]string, 12), make([]string, 12)
		nodes := map[string]bool{}
		for i := range hashes {
			hashes[i], values[i] = fmt.Sprintf("%064x", 1000+i), fmt.Sprintf("v %d", i)
			addr, err := masterOf(ctx, cc, DedupKey(hashes[i]))
			require.NoError(t, err)
			nodes[addr] = true
		}
		require.Len(t, nodes, redistest.ClusterMasters, "the marks land on every master")
		set, errs := r.SetDedupMarks(ctx, hashes, values, time.Minute)
		for i := range hashes {
			require.NoError(t, errs[i])
			require.True(t, set[i])
			v, err := r.GetDedupMark(ctx, hashes[i])
			require.NoError(t, err)
			require.Equal(t, values[i], v)
		}
		set, errs = r.SetDedupMarks(ctx, hashes, values, time.Minute)
		for i := range hashes {
			require.NoError(t, errs[i])
			require.False(t, set[i], "a second mark is not set")
			require.NoError(t, r.ReleaseDedupMark(ctx, hashes[i], values[i]))
		}
	})

	t.Run("idempotency", func(t *testing.T) {
		nodes := map[string]bool{}
		for i := range 12 {
			scope := fmt.Sprintf("%064x", 2000+i)
			addr, err := masterOf(ctx, cc, IdempotencyKey(scope))
			require.NoError(t, err)
			nodes[addr] = true
			taken, _, err := r.TakeIdempotency(ctx, scope, []byte("pending"), time.Minute)
			require.NoError(t, err)
			require.True(t, taken)
			taken, existing, err := r.TakeIdempotency(ctx, scope, []byte("other"), time.Minute)
			require.NoError(t, err)
			require.False(t, taken)
			require.Equal(t, "pending", string(existing))
			ok, err := r.FinishIdempotency(ctx, scope, []byte("pending"), []byte("final"), time.Minute) // setIfScript
			require.NoError(t, err)
			require.True(t, ok)
			ok, err = r.FinishIdempotency(ctx, scope, []byte("pending"), []byte("again"), time.Minute)
			require.NoError(t, err)
			require.False(t, ok, "a record no longer pending is left alone")
			v, err := r.GetIdempotency(ctx, scope)
			require.NoError(t, err)
			require.Equal(t, "final", string(v))
			require.NoError(t, r.ReleaseIdempotency(ctx, scope, []byte("final")))
			v, err = r.GetIdempotency(ctx, scope)
			require.NoError(t, err)
			require.Nil(t, v)
		}
		require.Len(t, nodes, redistest.ClusterMasters, "the records land on every master")
	})

	t.Run("hot-path record with result", func(t *testing.T) {
		for _, q := range []string{"opensrs", "digicert"} {
			for range 6 {
				id := uuid.NewString()
				// asynq's task hash, in the queue's slot, apart from the task's keys.
				require.NoError(t, cc.HSet(ctx, AsynqTaskKey(q, id), "state", "active").Err())
				require.NoError(t, r.RecordAttemptWithResult(ctx, Attempt{TaskID: id, Outcome: "succeeded", JSON: []byte(`{"n":1}`)},
					limits, q, []byte(`{"ok":true}`)))
				res, err := cc.HGet(ctx, AsynqTaskKey(q, id), "result").Result()
				require.NoError(t, err)
				require.Equal(t, `{"ok":true}`, res)
				att, err := r.Attempts(ctx, id)
				require.NoError(t, err)
				require.Len(t, att, 1)
				require.NoError(t, cc.Del(ctx, AsynqTaskKey(q, id)).Err())
			}
		}
	})

	t.Run("per credential", func(t *testing.T) {
		l := r.NewLimiter()
		for i := range 6 {
			p, h := "digicert", fmt.Sprintf("%016x", i)
			res, err := l.Reserve(ctx, p, h, []LimitRule{{N: 1, Per: time.Minute}, {N: 5, Per: time.Hour}})
			require.NoError(t, err)
			require.Zero(t, res.Wait)
			res, err = l.Reserve(ctx, p, h, []LimitRule{{N: 1, Per: time.Minute}, {N: 5, Per: time.Hour}})
			require.NoError(t, err)
			require.Positive(t, res.Wait)
			log, err := l.RateLimitLog(ctx, p, h, 1)
			require.NoError(t, err)
			require.Len(t, log, 1)

			ok, _, err := r.AcquireSlot(ctx, p, h, "t1", 1, time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			ok, _, err = r.AcquireSlot(ctx, p, h, "t2", 1, time.Minute)
			require.NoError(t, err)
			require.False(t, ok)
			require.NoError(t, r.ReleaseSlot(ctx, p, h, "t1"))
			n, err := r.SlotsHeld(ctx, p, h)
			require.NoError(t, err)
			require.Zero(t, n)

			lim := OutageLimits{Threshold: 1, Window: time.Minute, ProbeEvery: time.Second, TTL: time.Hour}
			adm, err := r.OutageAdmit(ctx, p, h, "x", time.Second)
			require.NoError(t, err)
			require.True(t, adm.Admitted)
			st, err := r.OutageReport(ctx, p, h, OutageFail, "", lim, "m1")
			require.NoError(t, err)
			require.Equal(t, OutageOpened, st.Transition)
			open, err := r.OutageOpen(ctx, p, h)
			require.NoError(t, err)
			require.True(t, open)
		}
	})

	rec.mu.Lock()
	require.Empty(t, rec.seen, "no node refused or redirected a command")
	rec.mu.Unlock()
	// The watch works: a script across slots sent to a node is seen (the
	// cluster client itself refuses one before sending it, with an error
	// every call above would have returned).
	require.NoError(t, cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		require.ErrorContains(t, n.Eval(ctx, `return 1`, []string{"{a}x", "{b}x"}).Err(), "CROSSSLOT")
		return nil
	}))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.seen, redistest.ClusterMasters)
}

// masterOf returns the address of the master serving key.
func masterOf(ctx context.Context, cc *redis.ClusterClient, key string) (string, error) {
	s, err := cc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", err
	}
	ranges, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return "", err
	}
	for _, r := range ranges {
		if int64(r.Start) <= s && s <= int64(r.End) {
			return r.Nodes[0].Addr, nil
		}
	}
	return "", fmt.Errorf("no master for slot %d", s)
}

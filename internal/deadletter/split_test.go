package deadletter_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestLegacyKeysAfterUpgrade: a dead letter an older version wrote under
// the untagged key names (record, history, index entry, its task archived)
// is, after the upgrade, kept by the first sweep (not recorded again as
// "reconciled"), listed, shown with its history, replayed once, and no
// legacy key is left behind.
func TestLegacyKeysAfterUpgrade(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		ctx := t.Context()
		id := bu.enqueue(t, tasks.NewOpenSRSPayload("7007", "", false), 3)
		bu.archive(t, tasks.QueueOpenSRS, id)
		died := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
		rec, err := json.Marshal(outcome.DeadLetter{ID: id, Type: tasks.TypeOpenSRSResendCertEmail, Queue: tasks.QueueOpenSRS,
			Provider: tasks.QueueOpenSRS, OrderID: "7007", Payload: outcome.Payload(`{"order_id":"7007"}`), MaxRetry: 3,
			LastError: "404: order not found", LastFailedAt: died, Class: "permanent", Source: "handler"})
		require.NoError(t, err)
		att, err := json.Marshal(outcome.Attempt{TaskID: id, Type: tasks.TypeOpenSRSResendCertEmail, Queue: tasks.QueueOpenSRS,
			Attempt: 1, Outcome: outcome.Dead, At: died})
		require.NoError(t, err)
		require.NoError(t, bu.rdb.Set(ctx, rdb.LegacyDeadKey(id), rec, 0).Err())
		require.NoError(t, bu.rdb.RPush(ctx, rdb.LegacyAttemptsKey(id), att).Err())
		require.NoError(t, bu.rdb.ZAdd(ctx, rdb.DeadIndexKey, redis.Z{Score: float64(died.UnixMilli()), Member: id}).Err())

		svc := newService(t, b) // the upgraded dlq: a Service of its own
		added, err := svc.Reconcile(ctx)
		require.NoError(t, err)
		require.Zero(t, added, "the old record counts: nothing reconciled")

		list, err := svc.List(ctx, deadletter.Filter{})
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, id, list[0].ID)
		require.Equal(t, "handler", list[0].Source)
		require.Equal(t, "404: order not found", list[0].LastError)

		det, err := svc.Show(ctx, id)
		require.NoError(t, err)
		require.Len(t, det.Attempts, 1)
		require.Equal(t, outcome.Dead, det.Attempts[0].Outcome)
		require.Equal(t, "archived", det.State)

		res, err := svc.Replay(ctx, deadletter.Filter{IDs: []string{id}}, false)
		require.NoError(t, err)
		require.Len(t, res, 1)
		require.NoError(t, res[0].Err)
		require.Equal(t, deadletter.ReplayID(id), res[0].NewID)
		require.Equal(t, 1, bu.queueInfo(t).Pending, "one successor")
		for _, k := range []string{rdb.LegacyDeadKey(id), rdb.LegacyAttemptsKey(id)} {
			require.Zero(t, bu.rdb.Exists(ctx, k).Val(), k)
		}
		bu.requireNoneLeft(t)
	})
}

// TestIndexOutsideTheScripts: the dead-letter index is one key, in its own
// slot, so it is written by a command of its own after the script that
// adds or finishes a record. A process that stops between the two leaves
// the index out of step; listings, the sweep and replay stay exactly once.
func TestIndexOutsideTheScripts(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		ctx := t.Context()
		ids := seedMany(t, bu, 3)
		finished, unindexed, plain := ids[0], ids[1], ids[2]

		// finished: replayed, then its index entry comes back as if the
		// finish had stopped before removing it.
		res, err := bu.svc.Replay(ctx, deadletter.Filter{IDs: []string{finished}}, false)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.NoError(t, bu.rdb.ZAdd(ctx, rdb.DeadIndexKey, redis.Z{Score: 1, Member: finished}).Err())
		// unindexed: a record whose index entry was never written.
		require.NoError(t, bu.rdb.ZRem(ctx, rdb.DeadIndexKey, unindexed).Err())

		list, err := bu.svc.List(ctx, deadletter.Filter{})
		require.NoError(t, err)
		require.Equal(t, []string{plain}, idsOf(list), "a finished letter is not listed; an unindexed one not yet")
		n, err := bu.store.CountDead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "the listing dropped the finished letter's entry")

		added, err := bu.svc.Reconcile(ctx)
		require.NoError(t, err)
		require.Zero(t, added, "the record exists: not added again")
		list, err = bu.svc.List(ctx, deadletter.Filter{})
		require.NoError(t, err)
		require.ElementsMatch(t, []string{unindexed, plain}, idsOf(list), "the sweep indexed the record")

		res, err = bu.svc.Replay(ctx, deadletter.Filter{}, false)
		require.NoError(t, err)
		require.Len(t, res, 2)
		for _, r := range res {
			require.NoError(t, r.Err)
		}
		res, err = bu.svc.Replay(ctx, deadletter.Filter{IDs: []string{finished}}, false)
		require.NoError(t, err)
		require.ErrorIs(t, res[0].Err, deadletter.ErrSkipped, "replayed once only")
		require.Equal(t, 3, bu.queueInfo(t).Pending, "one successor per letter")
		bu.requireNoneLeft(t)
	})
}

func idsOf(ds []outcome.DeadLetter) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

package deadletter_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// seedAt leaves n dead letters (archived, recorded by the sweep) that died
// at the given time, by running the sweep with its clock set there.
func seedAt(t *testing.T, bu *bundle, n, first int, at time.Time) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = bu.enqueue(t, tasks.NewOpenSRSPayload(strconv.Itoa(first+i), "", false), 2)
		bu.archive(t, tasks.QueueOpenSRS, ids[i])
	}
	deadletter.SetNow(bu.svc, func() time.Time { return at })
	defer deadletter.SetNow(bu.svc, time.Now)
	added, err := bu.svc.Reconcile(t.Context())
	require.NoError(t, err)
	require.Equal(t, n, added)
	return ids
}

func TestPrune(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		ctx := t.Context()
		const retention = 90 * 24 * time.Hour
		old := seedAt(t, bu, 4, 100, time.Now().Add(-retention-time.Hour))
		fresh := seedAt(t, bu, 2, 200, time.Now().Add(-retention+time.Hour))

		// old[2] was run again from the dashboard: alive, not ours to expire.
		require.NoError(t, bu.insp.RunTask(tasks.QueueOpenSRS, old[2]))
		// old[3] is being replayed by an operator right now.
		rec, ok, err := bu.store.DeadLetter(ctx, old[3])
		require.NoError(t, err)
		require.True(t, ok)
		c, err := bu.store.ClaimDead(ctx, old[3], outcome.OpReplay, "operator", time.Minute,
			outcome.Successor{Queue: rec.Queue, ID: deadletter.ReplayID(old[3])})
		require.NoError(t, err)
		require.True(t, c.Won)

		n, err := bu.svc.Prune(ctx, 0)
		require.NoError(t, err)
		require.Zero(t, n, "retention 0 keeps everything")

		n, err = bu.svc.Prune(ctx, retention)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		for _, id := range old[:2] {
			_, ok, err := bu.store.DeadLetter(ctx, id)
			require.NoError(t, err)
			require.False(t, ok, "%s: expired record removed", id)
			tomb, err := bu.store.Tombstone(ctx, id)
			require.NoError(t, err)
			require.Equal(t, outcome.OpExpire, tomb)
			_, err = bu.insp.GetTaskInfo(tasks.QueueOpenSRS, id)
			require.ErrorIs(t, err, asynq.ErrTaskNotFound, "%s: archived task removed with the record", id)
		}
		for _, id := range append([]string{old[2], old[3]}, fresh...) {
			_, ok, err := bu.store.DeadLetter(ctx, id)
			require.NoError(t, err)
			require.True(t, ok, "%s: kept", id)
		}

		added, err := bu.svc.Reconcile(ctx)
		require.NoError(t, err)
		require.Zero(t, added, "the sweep does not bring expired letters back")
		res, err := bu.svc.Replay(ctx, deadletter.Filter{IDs: old[:1]}, false)
		require.NoError(t, err)
		require.Len(t, res, 1)
		require.ErrorIs(t, res[0].Err, deadletter.ErrSkipped)
		require.ErrorContains(t, res[0].Err, "DEADLETTER_RETENTION")
	})
}

// Expiry racing operators: every old letter ends replayed exactly once or
// expired, never both, and nothing comes back.
func TestPruneRacesReplay(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		ctx := t.Context()
		const retention = 24 * time.Hour
		ids := seedAt(t, bu, 200, 1000, time.Now().Add(-2*retention))

		var wg sync.WaitGroup
		var replayed []deadletter.Replayed
		pruned := make([]int, 2)
		wg.Go(func() {
			res, err := newService(t, b).Replay(ctx, deadletter.Filter{}, false)
			require.NoError(t, err)
			replayed = res
		})
		for i := range pruned {
			wg.Go(func() {
				n, err := newService(t, b).Prune(ctx, retention)
				require.NoError(t, err)
				pruned[i] = n
			})
		}
		wg.Wait()

		nReplayed := 0
		for _, r := range replayed {
			if r.Err == nil {
				nReplayed++
				continue
			}
			require.ErrorIs(t, r.Err, deadletter.ErrSkipped)
		}
		var tombs = map[outcome.DeadOp]int{}
		for _, id := range ids {
			tomb, err := bu.store.Tombstone(ctx, id)
			require.NoError(t, err)
			tombs[tomb]++
		}
		t.Logf("replayed %d, expired %d + %d", nReplayed, pruned[0], pruned[1])
		require.Equal(t, len(ids), nReplayed+pruned[0]+pruned[1], "each letter handled once")
		require.Equal(t, nReplayed, tombs[outcome.OpReplay])
		require.Equal(t, pruned[0]+pruned[1], tombs[outcome.OpExpire])
		require.Equal(t, nReplayed, bu.queueInfo(t).Pending, "one new task per replayed letter, none for expired ones")
		bu.requireNoneLeft(t)
	})
}

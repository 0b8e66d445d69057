package deadletter_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// seedMany leaves n dead letters in the opensrs queue: archived by asynq and
// recorded by the sweep (the crash path), oldest first.
func seedMany(t *testing.T, bu *bundle, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = bu.enqueue(t, tasks.NewOpenSRSPayload(strconv.Itoa(5000+i), "", false), 2)
	}
	archived, err := bu.insp.ArchiveAllPendingTasks(tasks.QueueOpenSRS)
	require.NoError(t, err)
	require.Equal(t, n, archived)
	added, err := bu.svc.Reconcile(t.Context())
	require.NoError(t, err)
	require.Equal(t, n, added)
	return ids
}

// newService is another operator: its own client and service.
func newService(t *testing.T, b redistest.Backend) *deadletter.Service {
	t.Helper()
	rdb := b.Universal(t)
	svc := deadletter.New(rdb, outcome.NewStore(rdb, 0))
	t.Cleanup(func() { _ = svc.Close() })
	return svc
}

func (bu *bundle) queueInfo(t *testing.T) *asynq.QueueInfo {
	t.Helper()
	qi, err := bu.insp.GetQueueInfo(tasks.QueueOpenSRS)
	require.NoError(t, err)
	return qi
}

// requireNoneLeft: no record, nothing archived, and neither a sweep nor a
// replay finds anything to do.
func (bu *bundle) requireNoneLeft(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	n, err := bu.store.CountDead(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "records left")
	require.Zero(t, bu.queueInfo(t).Archived, "archived tasks left")
	added, err := bu.svc.Reconcile(ctx)
	require.NoError(t, err)
	require.Zero(t, added, "resurrected by the sweep")
	res, err := bu.svc.Replay(ctx, deadletter.Filter{}, false)
	require.NoError(t, err)
	require.Empty(t, res, "a final replay --all replays nothing")
}

// tally is what concurrent operators reported, per old ID.
type tally struct {
	mu       sync.Mutex
	replayed map[string][]string // old ID → new IDs printed
	deleted  map[string]int
	skipped  int
	skipLog  map[string][]string
}

func newTally() *tally {
	return &tally{replayed: map[string][]string{}, deleted: map[string]int{}, skipLog: map[string][]string{}}
}

func (ty *tally) addReplay(t *testing.T, res []deadletter.Replayed) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	for _, r := range res {
		switch {
		case r.Err == nil:
			ty.replayed[r.OldID] = append(ty.replayed[r.OldID], r.NewID)
		case errors.Is(r.Err, deadletter.ErrSkipped):
			ty.skipped++
			ty.skipLog[r.OldID] = append(ty.skipLog[r.OldID], r.Err.Error())
		default:
			t.Errorf("replay %s: %v", r.OldID, r.Err)
		}
	}
}

func (ty *tally) addDelete(t *testing.T, ids []string, err error) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	for _, id := range ids {
		ty.deleted[id]++
	}
	if err == nil {
		return
	}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		if errors.Is(e, deadletter.ErrSkipped) {
			ty.skipped++
			id, _, _ := strings.Cut(e.Error(), ":")
			ty.skipLog[id] = append(ty.skipLog[id], e.Error())
		} else {
			t.Errorf("delete: %v", e)
		}
	}
}

// TestReplayRacesDeleteAndSweep: operators replay and delete the same dead
// letters at once while sweeps and listings run; each letter ends replayed
// once or deleted once, never both, and nothing comes back.
func TestReplayRacesDeleteAndSweep(t *testing.T) {
	t.Parallel()
	const n = 300
	tests := []struct {
		name             string
		replays, deletes int
	}{
		{"replay vs replay", 3, 0},
		{"delete vs delete", 0, 3},
		{"replay vs delete", 2, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				bu := setup(t, b)
				ids := seedMany(t, bu, n)
				ctx := t.Context()

				ty := newTally()
				start := make(chan struct{})
				var ops, sweeps sync.WaitGroup
				for range tc.replays {
					svc := newService(t, b)
					ops.Go(func() {
						<-start
						res, err := svc.Replay(ctx, deadletter.Filter{}, false)
						if assertNoError(t, err) {
							ty.addReplay(t, res)
						}
					})
				}
				for range tc.deletes {
					svc := newService(t, b)
					ops.Go(func() {
						<-start
						got, err := svc.Delete(ctx, deadletter.Filter{})
						ty.addDelete(t, got, err)
					})
				}
				// Sweeps and listings meanwhile, as workers and `dlq list` run them.
				stop := make(chan struct{})
				for range 3 {
					svc := newService(t, b)
					sweeps.Go(func() {
						<-start
						for {
							select {
							case <-stop:
								return
							default:
							}
							_, err := svc.Reconcile(ctx)
							assertNoError(t, err)
							_, err = svc.List(ctx, deadletter.Filter{})
							assertNoError(t, err)
						}
					})
				}
				close(start)
				ops.Wait()
				close(stop)
				sweeps.Wait()

				pending := 0
				for _, id := range ids {
					news, deleted := ty.replayed[id], ty.deleted[id]
					tomb, err := bu.store.Tombstone(ctx, id)
					require.NoError(t, err)
					if len(news)+deleted != 1 {
						_, rec, _ := bu.store.DeadLetter(ctx, id)
						succ, serr := bu.insp.GetTaskInfo(tasks.QueueOpenSRS, deadletter.ReplayID(id))
						old, oerr := bu.insp.GetTaskInfo(tasks.QueueOpenSRS, id)
						t.Logf("%s, reported by nobody: tombstone %q, record %v, successor %v (%v), archived task %v (%v), skips %q", id, tomb, rec, succ, serr, old, oerr, ty.skipLog[id])
					}
					require.Equal(t, 1, len(news)+deleted, "%s: replayed as %v, deleted %d times", id, news, deleted)
					if deleted == 1 {
						require.Equal(t, outcome.OpDelete, tomb)
						continue
					}
					pending++
					require.Equal(t, deadletter.ReplayID(id), news[0])
					require.Equal(t, outcome.OpReplay, tomb)
					info, err := bu.insp.GetTaskInfo(tasks.QueueOpenSRS, news[0])
					require.NoError(t, err)
					require.Equal(t, asynq.TaskStatePending, info.State)
				}
				require.Equal(t, pending, bu.queueInfo(t).Pending, "one task per replayed letter")
				// An operator that selected after a letter was finished never saw it.
				require.LessOrEqual(t, ty.skipped, (tc.replays+tc.deletes-1)*n)
				bu.requireNoneLeft(t)
				t.Logf("%d replayed, %d deleted, %d skips", pending, n-pending, ty.skipped)
			})
		})
	}
}

func assertNoError(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

// TestReplayAfterCrash: a replay that stops anywhere between its claim and
// its finish neither loses the dead letter nor sends it twice.
func TestReplayAfterCrash(t *testing.T) {
	t.Parallel()
	const lease = 300 * time.Millisecond
	tests := []struct {
		name string
		// crash does what the crashed replay did after claiming id.
		crash func(t *testing.T, bu *bundle, id string)
		// wantNew: the next replay enqueues the successor (false: it exists).
		wantNew bool
	}{
		{"after the claim", func(*testing.T, *bundle, string) {}, true},
		{"after deleting the archived task", func(t *testing.T, bu *bundle, id string) {
			require.NoError(t, bu.insp.DeleteTask(tasks.QueueOpenSRS, id))
		}, true},
		{"after enqueueing", func(t *testing.T, bu *bundle, id string) {
			require.NoError(t, bu.insp.DeleteTask(tasks.QueueOpenSRS, id))
			bu.enqueueSuccessor(t, id)
		}, false},
		{"after enqueueing, successor already done and forgotten by asynq", func(t *testing.T, bu *bundle, id string) {
			require.NoError(t, bu.insp.DeleteTask(tasks.QueueOpenSRS, id))
			next := bu.enqueueSuccessor(t, id)
			require.NoError(t, bu.insp.DeleteTask(tasks.QueueOpenSRS, next))
			require.NoError(t, bu.store.Record(t.Context(), outcome.Attempt{TaskID: next, Type: tasks.TypeOpenSRSResendCertEmail,
				Queue: tasks.QueueOpenSRS, Attempt: 1, Outcome: outcome.Succeeded, At: time.Now()}, nil))
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				bu := setup(t, b)
				ctx := t.Context()
				ids := seedMany(t, bu, 2)
				id, other := ids[0], ids[1]

				c, err := bu.store.ClaimDead(ctx, id, outcome.OpReplay, "crashed", lease,
					outcome.Successor{Queue: tasks.QueueOpenSRS, ID: deadletter.ReplayID(id)})
				require.NoError(t, err)
				require.True(t, c.Won)
				tc.crash(t, bu, id)
				pendingBefore := bu.queueInfo(t).Pending

				// While the claim holds, others skip it and replay the rest.
				res, err := bu.svc.Replay(ctx, deadletter.Filter{}, false)
				require.NoError(t, err)
				require.Len(t, res, 2)
				for _, r := range res {
					if r.OldID == id {
						require.ErrorIs(t, r.Err, deadletter.ErrSkipped)
						require.ErrorContains(t, r.Err, "being replayed by another operator")
						require.Empty(t, r.NewID)
					} else {
						require.Equal(t, other, r.OldID)
						require.NoError(t, r.Err)
					}
				}
				_, ok, err := bu.store.DeadLetter(ctx, id)
				require.NoError(t, err)
				require.True(t, ok, "not lost")

				// The claim lapses: the next replay takes the letter.
				if b.Mini != nil {
					b.Mini.FastForward(time.Second)
				}
				var got deadletter.Replayed
				require.Eventually(t, func() bool {
					res, err := bu.svc.Replay(ctx, deadletter.Filter{IDs: []string{id}}, false)
					if err != nil || len(res) != 1 {
						return false
					}
					got = res[0]
					return !errors.Is(got.Err, deadletter.ErrSkipped)
				}, 10*time.Second, 50*time.Millisecond)
				require.NoError(t, got.Err)
				require.Equal(t, deadletter.ReplayID(id), got.NewID)

				added := 0
				if tc.wantNew {
					added = 1
				}
				require.Equal(t, pendingBefore+1+added, bu.queueInfo(t).Pending, "other's task, plus %d", added)
				bu.requireNoneLeft(t)
			})
		})
	}
}

// enqueueSuccessor does what a replay does at its enqueue step.
func (bu *bundle) enqueueSuccessor(t *testing.T, id string) string {
	t.Helper()
	next := deadletter.ReplayID(id)
	d, ok, err := bu.store.DeadLetter(t.Context(), id)
	require.NoError(t, err)
	require.True(t, ok)
	o := tasks.DefaultOptions()
	o.MaxRetry = d.MaxRetry
	require.NoError(t, tasks.NewEnqueuer(bu.rdb).EnqueueRawID(t.Context(), next, d.Type, d.Payload, o))
	return next
}

// TestReplayEnqueueFails: a failed enqueue keeps the record and frees the
// claim at once; the next replay sends it, once.
func TestReplayEnqueueFails(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		bu := setup(t, b)
		ctx := t.Context()
		ids := seedMany(t, bu, 3)

		boom := errors.New("connection reset")
		deadletter.SetEnqueue(bu.svc, func(context.Context, string, string, []byte, tasks.Options) error { return boom })
		res, err := bu.svc.Replay(ctx, deadletter.Filter{}, false)
		require.NoError(t, err)
		require.Len(t, res, 3)
		for _, r := range res {
			require.ErrorIs(t, r.Err, boom)
			require.NotErrorIs(t, r.Err, deadletter.ErrSkipped)
			require.ErrorContains(t, r.Err, "the dead-letter record is kept")
			require.Empty(t, r.NewID)
		}
		n, err := bu.store.CountDead(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 3, n, "not lost")
		require.Zero(t, bu.queueInfo(t).Pending)

		// Enqueued for real but answered with an error (a timeout after
		// the write): the next replay finds the successor and only finishes.
		real := deadletter.Enqueue(bu.svc)
		deadletter.SetEnqueue(bu.svc, func(ctx context.Context, id, typ string, p []byte, o tasks.Options) error {
			if err := real(ctx, id, typ, p, o); err != nil {
				return err
			}
			return boom
		})
		res, err = bu.svc.Replay(ctx, deadletter.Filter{IDs: ids[:1]}, false)
		require.NoError(t, err)
		require.ErrorIs(t, res[0].Err, boom)
		require.Equal(t, 1, bu.queueInfo(t).Pending)

		deadletter.SetEnqueue(bu.svc, real)
		res, err = bu.svc.Replay(ctx, deadletter.Filter{}, false) // no wait: the claims were released
		require.NoError(t, err)
		require.Len(t, res, 3)
		got := map[string]string{}
		for _, r := range res {
			require.NoError(t, r.Err)
			got[r.OldID] = r.NewID
		}
		want := map[string]string{}
		for _, id := range ids {
			want[id] = deadletter.ReplayID(id)
		}
		require.Equal(t, want, got)
		require.Equal(t, 3, bu.queueInfo(t).Pending, "one task per letter")
		bu.requireNoneLeft(t)
	})
}

// TestDeleteAfterInterruptedReplay: a delete that finds the successor of an
// interrupted replay finishes the letter as replayed instead of deleting it.
func TestDeleteAfterInterruptedReplay(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		bu := setup(t, b)
		ctx := t.Context()
		id := seedMany(t, bu, 1)[0]
		c, err := bu.store.ClaimDead(ctx, id, outcome.OpReplay, "crashed", time.Millisecond,
			outcome.Successor{Queue: tasks.QueueOpenSRS, ID: deadletter.ReplayID(id)})
		require.NoError(t, err)
		require.True(t, c.Won)
		require.NoError(t, bu.insp.DeleteTask(tasks.QueueOpenSRS, id))
		next := bu.enqueueSuccessor(t, id)
		if b.Mini != nil {
			b.Mini.FastForward(time.Second)
		}

		var got []string
		require.Eventually(t, func() bool {
			got, err = bu.svc.Delete(ctx, deadletter.Filter{IDs: []string{id}})
			return err == nil || !strings.Contains(err.Error(), "being replayed")
		}, 10*time.Second, 20*time.Millisecond)
		require.Empty(t, got, "not deleted")
		require.ErrorIs(t, err, deadletter.ErrSkipped)
		require.ErrorContains(t, err, fmt.Sprintf("already replayed (as %s) by an interrupted replay", next))
		tomb, err := bu.store.Tombstone(ctx, id)
		require.NoError(t, err)
		require.Equal(t, outcome.OpReplay, tomb)
		info, err := bu.insp.GetTaskInfo(tasks.QueueOpenSRS, next)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State, "the successor lives")
		bu.requireNoneLeft(t)
	})
}

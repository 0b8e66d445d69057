package deadletter_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/deadletter/deadlettertest"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

func TestMain(m *testing.M) { redistest.Main(m) }

type bundle struct {
	rdb    redis.UniversalClient
	store  *outcome.Store
	svc    *deadletter.Service
	insp   *asynq.Inspector
	client *asynq.Client
}

func setup(t *testing.T, b redistest.Backend) *bundle {
	t.Helper()
	rdb := b.Universal(t)
	store := outcome.NewStore(rdb, 0)
	bu := &bundle{rdb: rdb, store: store, svc: deadletter.New(rdb, store),
		insp: asynq.NewInspectorFromRedisClient(rdb), client: asynq.NewClientFromRedisClient(rdb)}
	t.Cleanup(func() {
		require.NoError(t, bu.svc.Close())
		_ = bu.insp.Close()
		_ = bu.client.Close()
		require.NoError(t, rdb.Ping(context.Background()).Err(), "Close must not close the shared client")
	})
	return bu
}

// enqueue puts a task in the queue; archive then moves it to the archive
// without the handler (the crash path).
func (bu *bundle) enqueue(t *testing.T, p tasks.Payload, maxRetry int) string {
	t.Helper()
	task, err := tasks.NewTask(p, tasks.Options{MaxRetry: maxRetry, Timeout: 20 * time.Second}, "")
	require.NoError(t, err)
	info, err := bu.client.EnqueueContext(t.Context(), task)
	require.NoError(t, err)
	return info.ID
}

func (bu *bundle) archive(t *testing.T, queue, id string) {
	t.Helper()
	require.NoError(t, bu.insp.ArchiveTask(queue, id))
}

func TestReconcile(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		ctx := t.Context()

		// One dead through the handler (has a record), one archived behind
		// the handler's back (crash path), one still pending.
		viaHandler := bu.enqueue(t, tasks.NewOpenSRSPayload("1", "", false), 0)
		deadlettertest.Drain(t, bu.rdb, deadlettertest.Resender{Default: deadlettertest.Permanent(404, "order 1 not found")}, 2)
		crashed := bu.enqueue(t, &tasks.DigiCertPayload{OrderID: "22", Reference: "r-22"}, 4)
		bu.archive(t, tasks.QueueDigiCert, crashed)
		pending := bu.enqueue(t, tasks.NewOpenSRSPayload("3", "", false), 0)

		before := time.Now()
		added, err := bu.svc.Reconcile(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, added)

		d, ok, err := bu.store.DeadLetter(ctx, crashed)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, crashed, d.ID)
		require.Equal(t, tasks.TypeDigiCertResendEmails, d.Type)
		require.Equal(t, "digicert", d.Queue)
		require.Equal(t, "digicert", d.Provider)
		require.Equal(t, "22", d.OrderID)
		require.Equal(t, "r-22", d.Reference)
		require.JSONEq(t, `{"order_id":"22","reference":"r-22"}`, string(d.Payload))
		require.Equal(t, 0, d.Retried)
		require.Equal(t, 4, d.MaxRetry)
		require.Equal(t, "unknown", d.Class)
		require.Equal(t, "reconciled", d.Source)
		require.WithinDuration(t, before, d.LastFailedAt, 5*time.Second, "archived by hand: no LastFailedAt, found now")

		h, ok, err := bu.store.DeadLetter(ctx, viaHandler)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, "handler", h.Source, "the handler's record is kept")

		has, err := bu.store.HasDead(ctx, []string{pending})
		require.NoError(t, err)
		require.False(t, has[0])

		added, err = bu.svc.Reconcile(ctx)
		require.NoError(t, err)
		require.Zero(t, added, "idempotent")
	})
}

func TestReconcilePages(t *testing.T) {
	t.Parallel()
	const n = 1_234 // two pages of 1,000
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		for i := range n {
			bu.enqueue(t, tasks.NewOpenSRSPayload(strconv.Itoa(i+1), "", false), 1)
		}
		archived, err := bu.insp.ArchiveAllPendingTasks(tasks.QueueOpenSRS)
		require.NoError(t, err)
		require.Equal(t, n, archived)

		added, err := bu.svc.Reconcile(t.Context())
		require.NoError(t, err)
		require.Equal(t, n, added)
		count, err := bu.store.CountDead(t.Context())
		require.NoError(t, err)
		require.EqualValues(t, n, count)
	})
}

func TestReconcileEmptyAndCancelled(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		added, err := bu.svc.Reconcile(t.Context())
		require.NoError(t, err, "queues that never existed are empty")
		require.Zero(t, added)

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err = bu.svc.Reconcile(ctx)
		require.ErrorIs(t, err, context.Canceled)
	})
}

// seed leaves three dead letters: two OpenSRS (one with an invalid
// payload) through the handler, one DigiCert from the crash path.
func seed(t *testing.T, bu *bundle) (permanent, invalid, crashed string) {
	t.Helper()
	permanent = bu.enqueue(t, tasks.NewOpenSRSPayload("1001", "", false), 3)
	info, err := bu.client.EnqueueContext(t.Context(), asynq.NewTask(tasks.TypeOpenSRSResendCertEmail,
		[]byte(`{"order_id":""}`), asynq.Queue(tasks.QueueOpenSRS)))
	require.NoError(t, err)
	invalid = info.ID
	deadlettertest.Drain(t, bu.rdb, deadlettertest.Resender{Default: deadlettertest.Permanent(404, "Order Not Found")}, 2)
	crashed = bu.enqueue(t, &tasks.DigiCertPayload{OrderID: "2002"}, 2)
	bu.archive(t, tasks.QueueDigiCert, crashed)
	_, err = bu.svc.Reconcile(t.Context())
	require.NoError(t, err)
	return permanent, invalid, crashed
}

func TestList(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		permanent, invalid, crashed := seed(t, bu)
		tests := []struct {
			name    string
			f       deadletter.Filter
			want    []string
			wantErr error
		}{
			{"all", deadletter.Filter{}, []string{permanent, invalid, crashed}, nil},
			{"provider", deadletter.Filter{Provider: "opensrs"}, []string{permanent, invalid}, nil},
			{"error contains ignores case", deadletter.Filter{ErrorContains: "order not FOUND"}, []string{permanent}, nil},
			{"since", deadletter.Filter{Since: time.Hour}, []string{permanent, invalid, crashed}, nil},
			{"ids", deadletter.Filter{IDs: []string{crashed, permanent, crashed}}, []string{crashed, permanent}, nil},
			{"unknown id", deadletter.Filter{IDs: []string{"nope", permanent}}, []string{permanent}, deadletter.ErrNotFound},
			{"id outside filter", deadletter.Filter{IDs: []string{crashed}, Provider: "opensrs"}, []string{}, deadletter.ErrFilter},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				got, err := bu.svc.List(t.Context(), tc.f)
				if tc.wantErr != nil {
					require.ErrorIs(t, err, tc.wantErr)
				} else {
					require.NoError(t, err)
				}
				require.NotNil(t, got)
				gotIDs := make([]string, 0, len(got))
				for _, d := range got {
					gotIDs = append(gotIDs, d.ID)
				}
				require.ElementsMatch(t, tc.want, gotIDs)
			})
		}
		t.Run("InvalidProvider", func(t *testing.T) {
			t.Parallel()
			_, err := bu.svc.List(t.Context(), deadletter.Filter{Provider: "verisign"})
			require.ErrorContains(t, err, "provider: must be opensrs or digicert")
		})
	})
}

func TestShow(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		permanent, _, crashed := seed(t, bu)

		d, err := bu.svc.Show(t.Context(), permanent)
		require.NoError(t, err)
		require.Equal(t, "archived", d.State)
		require.Len(t, d.Attempts, 1)
		require.Equal(t, outcome.Dead, d.Attempts[0].Outcome)

		d, err = bu.svc.Show(t.Context(), crashed)
		require.NoError(t, err)
		require.Empty(t, d.Attempts)

		require.NoError(t, bu.insp.DeleteTask(tasks.QueueDigiCert, crashed))
		d, err = bu.svc.Show(t.Context(), crashed)
		require.NoError(t, err)
		require.Empty(t, d.State, "asynq no longer holds it")

		_, err = bu.svc.Show(t.Context(), "nope")
		require.ErrorIs(t, err, deadletter.ErrNotFound)
	})
}

func TestReplay(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		permanent, invalid, crashed := seed(t, bu)
		ctx := t.Context()

		dry, err := bu.svc.Replay(ctx, deadletter.Filter{}, true)
		require.NoError(t, err)
		require.Len(t, dry, 3)
		for _, r := range dry {
			require.Empty(t, r.NewID)
			if r.OldID == invalid {
				require.ErrorIs(t, r.Err, deadletter.ErrInvalidPayload)
			} else {
				require.NoError(t, r.Err)
			}
		}
		count, err := bu.store.CountDead(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 3, count, "dry run changes nothing")

		require.NoError(t, bu.insp.RunTask(tasks.QueueOpenSRS, permanent))
		res, err := bu.svc.Replay(ctx, deadletter.Filter{IDs: []string{permanent, invalid, crashed, "nope"}}, false)
		require.NoError(t, err)
		byID := map[string]deadletter.Replayed{}
		for _, r := range res {
			byID[r.OldID] = r
		}
		require.ErrorIs(t, byID[permanent].Err, deadletter.ErrNotArchived)
		require.ErrorIs(t, byID[invalid].Err, deadletter.ErrInvalidPayload)
		require.ErrorIs(t, byID["nope"].Err, deadletter.ErrNotFound)
		require.NoError(t, byID[crashed].Err)

		info, err := bu.insp.GetTaskInfo(tasks.QueueDigiCert, byID[crashed].NewID)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
		require.Equal(t, 2, info.MaxRetry)
		require.Equal(t, 20*time.Second, info.Timeout, "timeout of the archived task")
		_, err = bu.insp.GetTaskInfo(tasks.QueueDigiCert, crashed)
		require.ErrorIs(t, err, asynq.ErrTaskNotFound)

		left, err := bu.svc.List(ctx, deadletter.Filter{})
		require.NoError(t, err)
		require.Len(t, left, 2, "refused ones keep their records")
	})
}

func TestDelete(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		bu := setup(t, b)
		permanent, invalid, crashed := seed(t, bu)
		ctx := t.Context()

		got, err := bu.svc.Delete(ctx, deadletter.Filter{IDs: []string{invalid, "nope"}})
		require.ErrorIs(t, err, deadletter.ErrNotFound)
		require.Equal(t, []string{invalid}, got)

		got, err = bu.svc.Delete(ctx, deadletter.Filter{Provider: "digicert"})
		require.NoError(t, err)
		require.Equal(t, []string{crashed}, got)
		_, err = bu.insp.GetTaskInfo(tasks.QueueDigiCert, crashed)
		require.ErrorIs(t, err, asynq.ErrTaskNotFound)

		left, err := bu.svc.List(ctx, deadletter.Filter{})
		require.NoError(t, err)
		require.Len(t, left, 1)
		require.Equal(t, permanent, left[0].ID)
	})
}

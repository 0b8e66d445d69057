package main

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	certrdb "github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

// TestSIGTERMRequeuesSlowTaskWithItsAttemptRecorded: a worker process
// stopped with SIGTERM (SHUTDOWN_TIMEOUT=1s) while a provider call hangs, on
// a task with no retry left, exits 0 after recording the interrupted attempt
// and releasing the task's in-flight claim; the task is back to pending with
// its budget untouched, and the next worker completes it instead of waiting
// on a stale claim until asynq archives it.
func TestSIGTERMRequeuesSlowTaskWithItsAttemptRecorded(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	rdb := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()
	store := outcome.NewStore(rdb, 0)
	claimKey := func(id string) string { return certrdb.InflightKey(id) }

	w := startWorkerProc(t, bin, b.URL, "SHUTDOWN_TIMEOUT=1s")
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.MaxRetry = 0 // a shutdown must not kill it even with no budget left
	opts.DedupWindow = 0
	// Demo order 1004: the OpenSRS simulator answers after 20 s.
	res, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("1004", "slow", false), opts)
	require.NoError(t, err)
	waitState(t, insp, "opensrs", res.ID, asynq.TaskStateActive)
	require.Eventually(t, func() bool { return rdb.Exists(t.Context(), claimKey(res.ID)).Val() == 1 },
		20*time.Second, 10*time.Millisecond, "the attempt never claimed the provider call")

	code, took := w.terminate(t)
	t.Logf("worker exited %d, %s after SIGTERM", code, took)
	require.Equal(t, exitOK, code, w.stderr.String())
	require.NotContains(t, w.stderr.String(), "client is closed")

	info, err := insp.GetTaskInfo("opensrs", res.ID)
	require.NoError(t, err)
	require.Equal(t, asynq.TaskStatePending, info.State)
	require.Equal(t, 0, info.Retried)
	as, err := store.Attempts(t.Context(), res.ID)
	require.NoError(t, err)
	require.Len(t, as, 1, "the interrupted attempt is recorded")
	require.Equal(t, outcome.Retrying, as[0].Outcome)
	require.Equal(t, "interrupted", as[0].Class)
	require.Zero(t, rdb.Exists(t.Context(), claimKey(res.ID)).Val(), "the claim is released")
	_, dead, err := store.DeadLetter(t.Context(), res.ID)
	require.NoError(t, err)
	require.False(t, dead)

	// The next worker calls the provider at once and completes the task.
	w2 := startWorkerProc(t, bin, b.URL)
	require.Eventually(t, func() bool {
		info, err = insp.GetTaskInfo("opensrs", res.ID)
		return err == nil && (info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived)
	}, 90*time.Second, 100*time.Millisecond, "task never finished: %s", w2.stderr)
	require.Equal(t, asynq.TaskStateCompleted, info.State, info.LastErr)
	require.Equal(t, 0, info.Retried)
	as, err = store.Attempts(t.Context(), res.ID)
	require.NoError(t, err)
	outs := make([]outcome.Outcome, 0, len(as))
	for _, a := range as {
		outs = append(outs, a.Outcome)
	}
	require.Equal(t, []outcome.Outcome{outcome.Retrying, outcome.Succeeded}, outs)
	t.Logf("second worker: %s", w2.stderr)
	code, _ = w2.terminate(t)
	require.Equal(t, exitOK, code)
}

// slowRecorder takes its time before recording, like a loaded Redis or a
// busy machine at shutdown.
type slowRecorder struct {
	tasks.Recorder
	delay time.Duration
}

func (s slowRecorder) Record(ctx context.Context, a outcome.Attempt, dead *outcome.DeadLetter) error {
	time.Sleep(s.delay)
	return s.Recorder.Record(ctx, a, dead)
}

// TestShutdownWaitsForInterruptedAttempts: serve keeps Redis open until the
// attempts asynq's Shutdown gave up on are recorded, however long recording
// takes (within its bound). It used to close Redis as soon as Shutdown
// returned: the record failed with "redis: client is closed", no attempt was
// stored and the in-flight claim was left to block the requeued task.
func TestShutdownWaitsForInterruptedAttempts(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		w := startWorkerHooks(t, b, &hooks{recorder: func(r tasks.Recorder) tasks.Recorder {
			return slowRecorder{Recorder: r, delay: time.Second}
		}}, "--shutdown-timeout", "1s")
		w.demo.opensrs.SetBehavior("4343", opensrstest.Behavior{Hang: true})
		rdb := b.Client(t)
		insp := asynq.NewInspectorFromRedisClient(rdb)
		defer insp.Close()
		enq := tasks.NewEnqueuer(rdb)
		defer enq.Close()
		opts := tasks.DefaultOptions()
		opts.MaxRetry = 0
		res, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("4343", "", false), opts)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return w.demo.opensrs.Count("4343") == 1 || len(w.demo.opensrs.Requests()) > 0 },
			20*time.Second, 10*time.Millisecond, "task never reached the provider")

		require.Equal(t, exitOK, w.stop(t))
		require.NotContains(t, w.stderr.String(), "client is closed")
		info, err := insp.GetTaskInfo("opensrs", res.ID)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
		require.Equal(t, 0, info.Retried)
		as, err := outcome.NewStore(rdb, 0).Attempts(t.Context(), res.ID)
		require.NoError(t, err)
		require.Len(t, as, 1, "the interrupted attempt is recorded before Redis closes")
		require.Equal(t, outcome.Retrying, as[0].Outcome)
		require.Zero(t, rdb.Exists(t.Context(), certrdb.InflightKey(res.ID)).Val(), "the claim is released")
	})
}

// TestShutdownCoversEveryQueueServer: with one asynq server per queue, a
// shutdown while a call hangs on each provider puts both tasks back to
// pending with their budget untouched, and both interrupted attempts are
// recorded (their claims released) before Redis closes.
func TestShutdownCoversEveryQueueServer(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		w := startWorkerHooks(t, b, &hooks{recorder: func(r tasks.Recorder) tasks.Recorder {
			return slowRecorder{Recorder: r, delay: time.Second}
		}}, "--shutdown-timeout", "1s")
		w.demo.opensrs.SetBehavior("4344", opensrstest.Behavior{Hang: true})
		w.demo.digicert.SetBehavior("4345", digicerttest.Behavior{Hang: true})
		rdb := b.Client(t)
		insp := asynq.NewInspectorFromRedisClient(rdb)
		defer insp.Close()
		enq := tasks.NewEnqueuer(rdb)
		defer enq.Close()
		opts := tasks.DefaultOptions()
		opts.MaxRetry = 0
		o, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("4344", "", false), opts)
		require.NoError(t, err)
		d, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: "4345"}, opts)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return w.demo.opensrs.Count("4344") == 1 && w.demo.digicert.Count("4345") == 1 },
			20*time.Second, 10*time.Millisecond, "the tasks never reached the providers")

		require.Equal(t, exitOK, w.stop(t))
		require.NotContains(t, w.stderr.String(), "client is closed")
		store := outcome.NewStore(rdb, 0)
		for queue, id := range map[string]string{"opensrs": o.ID, "digicert": d.ID} {
			info, err := insp.GetTaskInfo(queue, id)
			require.NoError(t, err)
			require.Equal(t, asynq.TaskStatePending, info.State, queue)
			require.Equal(t, 0, info.Retried, queue)
			as, err := store.Attempts(t.Context(), id)
			require.NoError(t, err)
			require.Len(t, as, 1, "%s: the interrupted attempt is recorded before Redis closes", queue)
			require.Equal(t, outcome.Retrying, as[0].Outcome, queue)
			require.Zero(t, rdb.Exists(t.Context(), certrdb.InflightKey(id)).Val(), "%s: the claim is released", queue)
		}
	})
}

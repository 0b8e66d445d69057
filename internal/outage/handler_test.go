package outage_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outage"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/tasks/taskstest"
)

// TestOutageBurnsNoBudget: the real handler and asynq, 30 DigiCert tasks
// with two retries each, and a provider answering 503 until it recovers a
// few seconds after the circuit opened. Only the failures before the
// circuit opened are charged (threshold 3: at most 2); no task's retry
// count grows after it opened; the provider sees a handful of probes
// during the outage; a task enqueued during the outage on its last attempt
// (max_retry 0) waits for the probe instead of being archived; no task
// ends dead and every one completes after the recovery.
//
// Without the circuit (Threshold 0) the tasks spend their two retries in
// about a second and end dead.
func TestOutageBurnsNoBudget(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	c := b.Client(t)
	var down atomic.Bool
	down.Store(true)
	var calls, downCalls atomic.Int64
	provider := taskstest.ResendFunc(func(context.Context, providers.Request) (providers.Result, error) {
		calls.Add(1)
		if down.Load() {
			downCalls.Add(1)
			return providers.Result{}, taskstest.Transient(503, "503 service unavailable")
		}
		return providers.Result{StatusCode: 204}, nil
	})
	const threshold = 3
	// The worker honours rate-limit hints of up to 3 s in place, and its
	// requeues after an open circuit are longer (up to the 20-s probe
	// interval and more): scaled down with the interval, hints of 0.5 s.
	inAttempt := tasks.DefaultInAttempt
	inAttempt.MaxRateLimitWait = 500 * time.Millisecond
	guarded := outage.Wrap(provider, c, outage.Config{Provider: providers.DigiCert, Credential: "k", Threshold: threshold,
		Window: 10 * time.Second, ProbeInterval: time.Second})
	w := taskstest.Start(t, c, taskstest.Config{Resender: guarded, Concurrency: 4, RetryDelay: 200 * time.Millisecond,
		ProviderTimeout: 10 * time.Second, InAttempt: inAttempt})

	enq := tasks.NewEnqueuer(c)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	opts.MaxRetry = 2
	var ids []string
	for i := range 30 {
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: strconv.Itoa(7_000_000 + i)}, opts)
		require.NoError(t, err)
		ids = append(ids, res.ID)
	}
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	retried := func() (sum int, dead int) {
		for _, id := range ids {
			info, err := insp.GetTaskInfo(string(providers.DigiCert), id)
			require.NoError(t, err)
			sum += info.Retried
			if info.State == asynq.TaskStateArchived {
				dead++
			}
		}
		return sum, dead
	}

	open := func() bool {
		ok, err := rdb.New(c).OutageOpen(t.Context(), string(providers.DigiCert), rdb.CredentialHash("k"))
		require.NoError(t, err)
		return ok
	}
	opened := false
	for deadline := time.Now().Add(5 * time.Second); !opened && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		opened = open()
	}
	var atOpen, sumAtOpen int64
	var lastID string
	if opened {
		// Let the attempts that saw the opening settle with asynq.
		time.Sleep(500 * time.Millisecond)
		atOpen = downCalls.Load()
		s, _ := retried()
		sumAtOpen = int64(s)
		last := opts
		last.MaxRetry = 0
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: "7999999"}, last)
		require.NoError(t, err)
		lastID = res.ID
	}
	time.Sleep(3 * time.Second) // the outage goes on
	_, deadDuring := retried()
	probes := downCalls.Load() - atOpen
	down.Store(false)
	w.WaitIdle(t)

	sum, dead := retried()
	require.Zero(t, deadDuring, "no task died during the outage")
	require.Zero(t, dead, "no task ended dead")
	require.True(t, opened, "the circuit opened")
	require.LessOrEqual(t, sum, threshold-1, "only the failures before the circuit opened were charged")
	require.EqualValues(t, sumAtOpen, sum, "no retry count grew after the circuit opened")
	require.LessOrEqual(t, probes, int64(6), "a handful of probes in ~3 s at one per second")
	require.Positive(t, probes, "the circuit probed")
	for _, id := range append(ids, lastID) {
		info, err := insp.GetTaskInfo(string(providers.DigiCert), id)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStateCompleted, info.State, id)
		as, err := w.Store.Attempts(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, outcome.Succeeded, as[len(as)-1].Outcome)
		for _, a := range as {
			require.NotEqual(t, outcome.Dead, a.Outcome)
		}
	}
	require.False(t, open(), "the circuit closed")
}

package ratelimit_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/tasks/taskstest"
)

// TestWaitingNeverSpendsTheBudget: the real handler and asynq, ten tasks
// at once, a limit of 1/s and attempts whose provider deadline (500 ms) is
// shorter than most waits. A wait that cannot end before the deadline
// comes back as a rate-limited requeue recorded with provider_code
// local_rate_limit, never as a transient failure: no task's retry count
// grows, none dies, each reaches the provider once. Before, the in-place
// wait ran into the deadline and was charged as "request not sent:
// context deadline exceeded" (transient), and tasks ended dead.
func TestWaitingNeverSpendsTheBudget(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	rdb := b.Client(t)
	var sent atomic.Int64
	provider := taskstest.ResendFunc(func(context.Context, providers.Request) (providers.Result, error) {
		sent.Add(1)
		return providers.Result{StatusCode: 204}, nil
	})
	limited := ratelimit.Wrap(provider, rdb, providers.DigiCert, "k", []ratelimit.Rule{{N: 1, Per: time.Second}}, tasks.DefaultInAttempt.MaxRateLimitWait)
	w := taskstest.Start(t, rdb, taskstest.Config{Resender: limited, Concurrency: 10, RetryDelay: 200 * time.Millisecond,
		ProviderTimeout: 500 * time.Millisecond, InAttempt: tasks.DefaultInAttempt})

	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	opts.MaxRetry = 1
	const n = 10
	ids := make([]string, n)
	for i := range n {
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: strconv.Itoa(4_000_000 + i)}, opts)
		require.NoError(t, err)
		ids[i] = res.ID
	}
	w.WaitIdle(t)

	require.EqualValues(t, n, sent.Load())
	var held int
	for _, id := range ids {
		as, err := w.Store.Attempts(t.Context(), id)
		require.NoError(t, err)
		require.NotEmpty(t, as)
		require.Equal(t, outcome.Succeeded, as[len(as)-1].Outcome, "task %s: %+v", id, as[len(as)-1])
		for _, a := range as {
			require.Equal(t, 1, a.Attempt, "task %s: a wait spent the budget: %+v", id, a)
		}
		for _, a := range as[:len(as)-1] {
			require.Equal(t, outcome.RateLimited, a.Outcome, "task %s: %+v", id, a)
			require.Equal(t, "local_rate_limit", a.ProviderCode)
			require.NotContains(t, a.Error, "deadline")
			held++
		}
	}
	require.Positive(t, held, "some waits outlasted the deadline")
}

// TestLastAttemptWaitsForTheLimiter: tasks with no retry left (max_retry
// 0) behind a limit of 1 per 3 s, three at once, with the limiter's own
// in-place wait (1 s) shorter than the slots. asynq archives a task whose
// last attempt returns any error, a rate limit included, so the refusals
// are waited out inside the attempt: every task is sent once and succeeds,
// none is dead-lettered. Before, the second and third ended dead as
// retries_exhausted with local_rate_limit although nothing was sent.
func TestLastAttemptWaitsForTheLimiter(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	rdb := b.Client(t)
	var sent atomic.Int64
	provider := taskstest.ResendFunc(func(context.Context, providers.Request) (providers.Result, error) {
		sent.Add(1)
		return providers.Result{StatusCode: 204}, nil
	})
	limited := ratelimit.Wrap(provider, rdb, providers.DigiCert, "k", []ratelimit.Rule{{N: 1, Per: 3 * time.Second}}, time.Second)
	w := taskstest.Start(t, rdb, taskstest.Config{Resender: limited, Concurrency: 3,
		ProviderTimeout: 30 * time.Second, InAttempt: tasks.DefaultInAttempt})

	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	opts.MaxRetry = 0
	const n = 3
	ids := taskstest.EnqueueN(t, rdb, n, opts, func(i int) tasks.Payload {
		return &tasks.DigiCertPayload{OrderID: strconv.Itoa(4_100_000 + i)}
	})
	w.WaitIdle(t)

	require.EqualValues(t, n, sent.Load())
	w.RequireSucceededFirstTime(t, ids)
}

package inflight_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/inflight"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/tasks/taskstest"
)

// TestLastAttemptWaitsForASlot: three tasks with no retry left (max_retry
// 0) behind a cap of one call in flight, each call holding the slot 1.5 s,
// and an in-place wait for a slot (300 ms) far shorter than that; the
// refusal's requeue (over 4 s) is longer than the handler retries in place. asynq
// archives a task whose last attempt returns any error, so a refusal by
// the cap is waited out inside the attempt: all three are sent, one at a
// time, and succeed; none is dead-lettered. Before, the two that found the
// slot taken ended dead as retries_exhausted with in_flight_cap although
// nothing was sent.
func TestLastAttemptWaitsForASlot(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	rdb := b.Client(t)
	var sent, now, most atomic.Int64
	provider := taskstest.ResendFunc(func(ctx context.Context, _ providers.Request) (providers.Result, error) {
		sent.Add(1)
		n := now.Add(1)
		defer now.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select {
		case <-time.After(1500 * time.Millisecond):
		case <-ctx.Done():
			return providers.Result{}, ctx.Err()
		}
		return providers.Result{StatusCode: 200}, nil
	})
	capped := inflight.Wrap(provider, rdb, inflight.Config{Provider: providers.OpenSRS, Credential: "k", Cap: 1,
		CallLimit: 30 * time.Second, MaxWait: 300 * time.Millisecond, RetriedInPlace: tasks.DefaultInAttempt.MaxRateLimitWait})
	w := taskstest.Start(t, rdb, taskstest.Config{Resender: capped, Concurrency: 3,
		ProviderTimeout: 30 * time.Second, InAttempt: tasks.DefaultInAttempt})

	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	opts.MaxRetry = 0
	const n = 3
	ids := taskstest.EnqueueN(t, rdb, n, opts, func(i int) tasks.Payload {
		return &tasks.OpenSRSCertEmail{OpenSRSOrder: tasks.OpenSRSOrder{OrderID: strconv.Itoa(4_200_000 + i)}}
	})
	w.WaitIdle(t)

	require.EqualValues(t, n, sent.Load())
	require.EqualValues(t, 1, most.Load(), "the cap held")
	w.RequireSucceededFirstTime(t, ids)
}

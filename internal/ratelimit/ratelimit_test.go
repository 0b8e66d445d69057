package ratelimit

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestParseRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []Rule
		wantErr string
	}{
		{"", nil, ""},
		{"off", nil, ""},
		{"0", nil, ""},
		{DigiCertDefault, []Rule{{100, 5 * time.Second}, {1000, 3 * time.Minute}}, ""},
		{" 5/1s ", []Rule{{5, time.Second}}, ""},
		{"100", nil, "N/DURATION"},
		{"0/5s", nil, "N/DURATION"},
		{"x/5s", nil, "N/DURATION"},
		{"10/5", nil, "period"},
		{"10/500ms", nil, "period"},
		{"10/5s,", nil, "N/DURATION"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRules(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

type countResender struct{ n atomic.Int64 }

func (c *countResender) Resend(context.Context, providers.Request) (providers.Result, error) {
	c.n.Add(1)
	return providers.Result{Provider: providers.DigiCert, StatusCode: 204}, nil
}

func TestWrapWithoutRulesIsTheClient(t *testing.T) {
	t.Parallel()
	next := &countResender{}
	require.Same(t, providers.Resender(next), Wrap(next, nil, providers.DigiCert, "key", nil, time.Second))
}

// TestLimitSharedAcrossWorkers: two wrappers (two worker processes) with the
// same credential share one budget; calls past it either wait for a slot
// or, when the wait is too long, come back rate-limited and never reach
// the provider.
func TestLimitSharedAcrossWorkers(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Universal(t)
		next := &countResender{}
		rules := []Rule{{N: 4, Per: time.Second}}
		w1 := Wrap(next, rdb, providers.DigiCert, "the-api-key", rules, 0)
		w2 := Wrap(next, rdb, providers.DigiCert, "the-api-key", rules, 0)
		other := Wrap(next, rdb, providers.DigiCert, "another-key", rules, 0)

		var sent, held int
		for i := range 10 {
			w := w1
			if i%2 == 1 {
				w = w2
			}
			_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
			if err == nil {
				sent++
				continue
			}
			held++
			var le *Error
			require.ErrorAs(t, err, &le)
			d := providers.Describe(err)
			require.Equal(t, providers.RateLimited, d.Class)
			require.True(t, d.NotSent)
			require.Greater(t, d.RetryAfter, time.Duration(0))
			require.LessOrEqual(t, d.RetryAfter, time.Second+Guard(time.Second))
			require.Zero(t, d.WaitsOnReturn, "this limiter waits nothing in place: the task must not come back early")
			require.NotContains(t, err.Error(), "the-api-key")
			require.Contains(t, err.Error(), "our rate limit 4/1s reached")
		}
		require.Equal(t, 4, sent, "the burst is the rule's N, shared by both workers")
		require.Equal(t, 6, held)
		require.EqualValues(t, 4, next.n.Load())

		// Another credential has its own budget.
		_, err := other.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.NoError(t, err)

		keys, err := rdb.Keys(t.Context(), "*ratelimit*").Result()
		require.NoError(t, err)
		require.NotEmpty(t, keys)
		for _, k := range keys {
			require.NotContains(t, k, "api-key", "limiter keys hold a hash, never the credential")
		}
	})
}

// TestShortWaitIsTakenInPlace: with a wait allowance, a call past the burst
// waits for its slot instead of failing, and the steady rate holds.
func TestShortWaitIsTakenInPlace(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Universal(t)
		next := &countResender{}
		w := Wrap(next, rdb, providers.OpenSRS, "k", []Rule{{N: 5, Per: time.Second}}, 2*time.Second)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.EqualValues(t, 8, next.n.Load())
		// 5 at once, then 3 more when the first leave their 1-s window.
		require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond)
		// /metrics: at least the 3 late calls waited in place, none was sent back.
		r := w.(*Resender)
		require.GreaterOrEqual(t, r.Waits(), int64(3))
		require.Zero(t, r.Refusals())
		require.Positive(t, r.WaitedSeconds())
	})
}

func TestRedisDownIsTransientNotSent(t *testing.T) {
	t.Parallel()
	b := redistest.Mini(t)
	rdb := b.Universal(t)
	b.Mini.Close()
	next := &countResender{}
	w := Wrap(next, rdb, providers.DigiCert, "k", []Rule{{N: 5, Per: time.Second}}, time.Second)
	_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
	d := providers.Describe(err)
	require.Equal(t, providers.Transient, d.Class)
	require.True(t, d.NotSent)
	require.Zero(t, next.n.Load())
}

// TestWaitPastDeadlineIsARequeue: a slot that frees only after the
// attempt's deadline is not waited for: the call returns at once,
// rate-limited with the exact wait, so the handler requeues the task with
// its budget untouched instead of timing out as a transient failure.
func TestWaitPastDeadlineIsARequeue(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Universal(t)
		next := &countResender{}
		w := Wrap(next, rdb, providers.DigiCert, "k", []Rule{{N: 1, Per: 2 * time.Second}}, time.Minute)
		_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err = w.Resend(ctx, providers.Request{OrderID: "1"})
		require.NoError(t, ctx.Err(), "returned before the deadline, without waiting for it")
		d := providers.Describe(err)
		require.Equal(t, providers.RateLimited, d.Class)
		require.True(t, d.NotSent)
		require.Equal(t, "local_rate_limit", d.Code)
		require.Greater(t, d.RetryAfter, time.Second)
		require.LessOrEqual(t, d.RetryAfter, 2*time.Second+Guard(2*time.Second))
		require.Zero(t, d.WaitsOnReturn, "refused for the deadline: the next attempt's may be as short, so it must not come back early")
		require.EqualValues(t, 1, next.n.Load())
		// /metrics: one refusal, no wait in place.
		r := w.(*Resender)
		require.EqualValues(t, 1, r.Refusals())
		require.Zero(t, r.Waits())
	})
}

// TestRefusalPastMaxWaitComesBackEarly: a wait longer than maxWait is
// refused with WaitsOnReturn = maxWait, and the task that comes back that
// early (tasks.RetryDelay brings it back half of it early) waits the rest
// in place and is sent no sooner than the rule allows.
func TestRefusalPastMaxWaitComesBackEarly(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		provider := &recordResender{}
		w := Wrap(provider, b.Universal(t), providers.DigiCert, "k", []Rule{{N: 1, Per: 2 * time.Second}}, time.Second)
		_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.NoError(t, err)
		_, err = w.Resend(t.Context(), providers.Request{OrderID: "2"})
		d := providers.Describe(err)
		require.Equal(t, providers.RateLimited, d.Class)
		require.Greater(t, d.RetryAfter, time.Second, "longer than maxWait, so refused")
		require.Equal(t, time.Second, d.WaitsOnReturn)

		time.Sleep(d.RetryAfter - d.WaitsOnReturn/2) // the early requeue
		_, err = w.Resend(t.Context(), providers.Request{OrderID: "2"})
		require.NoError(t, err, "back early, it waited the rest in place")
		r := w.(*Resender)
		require.EqualValues(t, 1, r.Waits())
		require.EqualValues(t, 1, r.Refusals())
		got := provider.times
		require.Len(t, got, 2)
		require.GreaterOrEqual(t, got[1].Sub(got[0]), 2*time.Second, "sent no sooner than the rule allows")
	})
}

func TestCancelWhileWaiting(t *testing.T) {
	t.Parallel()
	b := redistest.Mini(t)
	rdb := b.Universal(t)
	next := &countResender{}
	w := Wrap(next, rdb, providers.DigiCert, "k", []Rule{{N: 1, Per: 10 * time.Second}}, time.Minute)
	_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = w.Resend(ctx, providers.Request{OrderID: "1"})
	require.ErrorIs(t, err, context.Canceled, "a cancellation (shutdown) is not a rate limit")
	require.Equal(t, providers.Transient, providers.Describe(err).Class)
	require.EqualValues(t, 1, next.n.Load())
}

// recordResender is the provider: it notes when each request arrives.
type recordResender struct {
	mu    sync.Mutex
	times []time.Time
}

func (r *recordResender) Resend(context.Context, providers.Request) (providers.Result, error) {
	r.mu.Lock()
	r.times = append(r.times, time.Now())
	r.mu.Unlock()
	return providers.Result{Provider: providers.DigiCert, StatusCode: 204}, nil
}

// maxInWindow is the most arrivals in any window (a-per, a] ending at an
// arrival a; times sorted.
func maxInWindow(times []time.Time, per time.Duration) int {
	most, lo := 0, 0
	for hi, a := range times {
		for !times[lo].After(a.Add(-per)) {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

// TestEveryRollingWindowHoldsAtTheProvider: three workers (own Redis
// connections), four tasks each, sending for 4.5 s under 10/1s,25/3s the
// way the handler does (in-place waits up to 3 s, longer ones requeued for
// RetryAfter): counted where the requests arrive, no 1-s window holds more
// than 10 and no 3-s window more than 25. GCRA with Burst = N let a burst
// of N through and refilled behind it (20+ in a 1-s window). Not parallel:
// arrivals are counted by this process's clock, after the grant.
func TestEveryRollingWindowHoldsAtTheProvider(t *testing.T) {
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		provider := &recordResender{}
		rules := []Rule{{N: 10, Per: time.Second}, {N: 25, Per: 3 * time.Second}}
		stop := time.Now().Add(4500 * time.Millisecond)
		var wg sync.WaitGroup
		errs := make(chan error, 12)
		for range 3 {
			w := Wrap(provider, b.Universal(t), providers.DigiCert, "the-api-key", rules, 3*time.Second)
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(stop) {
						_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
						if err == nil {
							continue
						}
						d := providers.Describe(err)
						if d.Class != providers.RateLimited {
							errs <- err
							return
						}
						time.Sleep(d.RetryAfter) // the requeue
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		got := provider.times
		sort.Slice(got, func(i, j int) bool { return got[i].Before(got[j]) })
		require.Greater(t, len(got), 25, "the run outlasted the 3-s rule's first window")
		require.LessOrEqual(t, maxInWindow(got, time.Second), 10, "a 1-s window held more than 10")
		require.LessOrEqual(t, maxInWindow(got, 3*time.Second), 25, "a 3-s window held more than 25")
	})
}

// TestRefusedRuleKeepsTheOthersSlots: a call refused by one rule takes no
// slot from another. Before, the rules were asked one after the other and
// each refused call still spent a slot of the hour's rule, which then
// refused the calls that the 1-s rule would have let through.
func TestRefusedRuleKeepsTheOthersSlots(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		next := &countResender{}
		w := Wrap(next, b.Universal(t), providers.DigiCert, "k", []Rule{{N: 3, Per: time.Hour}, {N: 1, Per: time.Second}}, 0)
		_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.NoError(t, err)
		for range 5 {
			_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
			d := providers.Describe(err)
			require.Equal(t, providers.RateLimited, d.Class, "the 1-s rule refuses")
			require.Contains(t, err.Error(), "1/1s")
		}
		for range 2 {
			time.Sleep(time.Second + Guard(time.Second))
			_, err := w.Resend(t.Context(), providers.Request{OrderID: "1"})
			require.NoError(t, err, "the hour's rule still has this slot: the refusals took none")
		}
		require.EqualValues(t, 3, next.n.Load())
	})
}

package tasks

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
)

// fakeErr is a provider error with a chosen Detail.
type fakeErr struct {
	msg string
	d   providers.Detail
}

func (e *fakeErr) Error() string            { return e.msg }
func (e *fakeErr) Detail() providers.Detail { return e.d }

func transientErr(msg string) error {
	return &fakeErr{msg: msg, d: providers.Detail{Provider: providers.OpenSRS, Class: providers.Transient, Message: msg}}
}

func notSentErr(msg string) error {
	return &fakeErr{msg: msg, d: providers.Detail{Provider: providers.OpenSRS, Class: providers.Transient, NotSent: true, Message: msg}}
}

func rateLimitedErr(msg string, after time.Duration) error {
	return &fakeErr{msg: msg, d: providers.Detail{Provider: providers.OpenSRS, Class: providers.RateLimited, StatusCode: 429, RetryAfter: after, Message: msg}}
}

func permanentErr(msg string) error {
	return &fakeErr{msg: msg, d: providers.Detail{Provider: providers.OpenSRS, Class: providers.Permanent, StatusCode: 404, Code: "not_found", Message: msg}}
}

func TestRetryPolicyDelay(t *testing.T) {
	t.Parallel()

	policies := []struct {
		name   string
		p      RetryPolicy
		jitter float64 // effective
	}{
		{"30s to 1h, jitter 0.2", RetryPolicy{Base: 30 * time.Second, Max: time.Hour, Jitter: 0.2}, 0.2},
		{"default policy", DefaultRetryPolicy, 0.2},
		{"jitter 0 means 0.2", RetryPolicy{Base: time.Second, Max: time.Minute}, 0.2},
		{"jitter 0.5", RetryPolicy{Base: 100 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.5}, 0.5},
	}
	for _, pc := range policies {
		for n := 0; n <= 12; n++ {
			t.Run(fmt.Sprintf("%s/n=%d", pc.name, n), func(t *testing.T) {
				t.Parallel()
				c := min(time.Duration(float64(pc.p.Base)*math.Pow(2, float64(n))), pc.p.Max)
				lo := time.Duration(float64(c)*(1-pc.jitter)) - time.Microsecond
				hi := min(time.Duration(float64(c)*(1+pc.jitter))+time.Microsecond, pc.p.Max)
				for range 50 { // jitter: sample a few times
					d := pc.p.Delay(n)
					require.GreaterOrEqual(t, d, lo)
					require.LessOrEqual(t, d, hi)
				}
			})
		}
	}
}

// TestRetryPolicyDelayNeverExceedsMax: once the schedule reaches Max, the
// +jitter half would land above it; RETRY_MAX is a promise, so it is clamped.
func TestRetryPolicyDelayNeverExceedsMax(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    RetryPolicy
		n    int
	}{
		{"default at the cap", DefaultRetryPolicy, 7},
		{"default far past the cap", DefaultRetryPolicy, 25},
		{"base equals max", RetryPolicy{Base: time.Minute, Max: time.Minute, Jitter: 0.2}, 0},
		{"jitter 0.5 at the cap", RetryPolicy{Base: time.Second, Max: 10 * time.Second, Jitter: 0.5}, 4},
		{"one step below the cap", RetryPolicy{Base: 30 * time.Second, Max: 100 * time.Second, Jitter: 0.2}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// With ±20 % jitter half the samples would overshoot; 200 draws
			// miss that with probability 2⁻²⁰⁰.
			for range 200 {
				require.LessOrEqual(t, tc.p.Delay(tc.n), tc.p.Max)
			}
		})
	}
}

func TestRetryPolicyDelayLargeN(t *testing.T) {
	t.Parallel()

	p := RetryPolicy{Base: 30 * time.Second, Max: time.Hour, Jitter: 0.2}
	for _, n := range []int{25, 64, 1000, math.MaxInt32} {
		d := p.Delay(n)
		require.GreaterOrEqual(t, d, time.Duration(float64(time.Hour)*0.8)-time.Microsecond)
		require.LessOrEqual(t, d, time.Hour)
	}
}

func TestRetryPolicyRetryDelay(t *testing.T) {
	t.Parallel()

	p := RetryPolicy{Base: 30 * time.Second, Max: time.Hour, Jitter: 0.2, RateLimitWait: 45 * time.Second}
	task := asynq.NewTask(TypeOpenSRSResendCertEmail, []byte(`{"order_id":"1"}`))
	tests := []struct {
		name   string
		n      int
		err    error
		lo, hi time.Duration
	}{
		{"rate limit hint", 3, &RateLimitError{RetryIn: 7 * time.Second, Err: errors.New("429")}, 7 * time.Second, 7 * time.Second},
		{"rate limit hint wrapped", 0, fmt.Errorf("attempt: %w", &RateLimitError{RetryIn: 90 * time.Second, Err: errors.New("429")}), 90 * time.Second, 90 * time.Second},
		{"rate limit sub-second hint rounds up to 1s", 5, &RateLimitError{RetryIn: 20 * time.Millisecond, Err: errors.New("429")}, time.Second, time.Second},
		{"rate limit without hint", 5, &RateLimitError{Err: errors.New("429")}, 45 * time.Second, 45 * time.Second},
		{"our limiter's refusal comes back early by half its in-place wait", 2, &RateLimitError{RetryIn: 5 * time.Second, WaitsOnReturn: 3 * time.Second, Err: errors.New("local")}, 3500 * time.Millisecond, 3500 * time.Millisecond},
		{"our limiter's short refusal still waits 1s", 2, &RateLimitError{RetryIn: 2 * time.Second, WaitsOnReturn: 3 * time.Second, Err: errors.New("local")}, time.Second, time.Second},
		{"rate limit negative hint", 5, &RateLimitError{RetryIn: -time.Second, Err: errors.New("429")}, 45 * time.Second, 45 * time.Second},
		{"other error n=0", 0, errors.New("boom"), 24 * time.Second, 36 * time.Second},
		{"other error n=2", 2, errors.New("boom"), 96 * time.Second, 144 * time.Second},
		{"dead error follows schedule", 1, &deadError{errors.New("x")}, 48 * time.Second, 72 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := p.RetryDelay(tc.n, tc.err, task)
			require.GreaterOrEqual(t, d, tc.lo)
			require.LessOrEqual(t, d, tc.hi)
		})
	}

	t.Run("no RateLimitWait still waits 1s", func(t *testing.T) {
		t.Parallel()
		d := RetryPolicy{Base: time.Second, Max: time.Second}.RetryDelay(0, &RateLimitError{Err: errors.New("429")}, task)
		require.Equal(t, time.Second, d)
	})
}

func TestIsFailure(t *testing.T) {
	t.Parallel()

	rl := &RateLimitError{RetryIn: time.Second, Err: errors.New("slow down")}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"rate limit", rl, false},
		{"rate limit wrapped", fmt.Errorf("opensrs: %w", rl), false},
		{"rate limit joined", errors.Join(errors.New("x"), rl), false},
		{"plain", errors.New("boom"), true},
		{"provider rate limit without our wrapper", rateLimitedErr("429", time.Second), true},
		{"dead", &deadError{errors.New("gone")}, true},
		{"skip retry", asynq.SkipRetry, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, IsFailure(tc.err))
		})
	}
}

func TestRateLimitErrorUnwrap(t *testing.T) {
	t.Parallel()

	inner := errors.New("slow down")
	err := &RateLimitError{RetryIn: time.Second, Err: inner}
	require.Equal(t, "slow down", err.Error())
	require.ErrorIs(t, err, inner)
}

func TestDeadErrorSkipsRetryKeepingText(t *testing.T) {
	t.Parallel()

	inner := permanentErr("order 7 not found")
	err := error(&deadError{inner})
	require.Equal(t, "order 7 not found", err.Error())
	require.ErrorIs(t, err, asynq.SkipRetry)
	require.ErrorIs(t, err, inner)
	require.Equal(t, providers.Permanent, providers.Classify(err))
}

func TestInAttemptCall(t *testing.T) {
	t.Parallel()

	okResult := providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "sent"}
	policy := InAttempt{MaxRetries: 3, Backoff: time.Millisecond, MaxRateLimitWait: 100 * time.Millisecond}

	tests := []struct {
		name      string
		policy    InAttempt
		errs      []error // errors returned by successive calls; success after them
		wantCalls int
		wantErr   error // nil: success expected
	}{
		{name: "success first time", policy: policy, wantCalls: 1},
		{name: "not sent then success", policy: policy, errs: []error{notSentErr("dial: refused"), notSentErr("dial: refused")}, wantCalls: 3},
		{name: "not sent exhausts MaxRetries", policy: policy,
			errs:      []error{notSentErr("n1"), notSentErr("n2"), notSentErr("n3"), notSentErr("n4"), notSentErr("n5")},
			wantCalls: 4, wantErr: notSentErr("n4")},
		{name: "not sent with MaxRetries 0", policy: InAttempt{Backoff: time.Millisecond},
			errs: []error{notSentErr("n1")}, wantCalls: 1, wantErr: notSentErr("n1")},
		{name: "transient maybe-sent is not retried", policy: policy,
			errs: []error{transientErr("read: connection reset")}, wantCalls: 1, wantErr: transientErr("read: connection reset")},
		{name: "plain error is not retried", policy: policy,
			errs: []error{errors.New("mystery")}, wantCalls: 1, wantErr: errors.New("mystery")},
		{name: "permanent is not retried", policy: policy,
			errs: []error{permanentErr("order not found")}, wantCalls: 1, wantErr: permanentErr("order not found")},
		{name: "short rate limit is honoured", policy: policy,
			errs: []error{rateLimitedErr("429", 20*time.Millisecond)}, wantCalls: 2},
		{name: "long rate limit goes back to the queue", policy: policy,
			errs: []error{rateLimitedErr("429", 10*time.Second)}, wantCalls: 1, wantErr: rateLimitedErr("429", 10*time.Second)},
		{name: "rate limit without hint goes back to the queue", policy: policy,
			errs: []error{rateLimitedErr("429", 0)}, wantCalls: 1, wantErr: rateLimitedErr("429", 0)},
		{name: "rate limit with zero MaxRateLimitWait", policy: InAttempt{MaxRetries: 3, Backoff: time.Millisecond},
			errs: []error{rateLimitedErr("429", 20*time.Millisecond)}, wantCalls: 1, wantErr: rateLimitedErr("429", 20*time.Millisecond)},
		{name: "not sent then long rate limit", policy: policy,
			errs: []error{notSentErr("n1"), rateLimitedErr("429", time.Minute)}, wantCalls: 2, wantErr: rateLimitedErr("429", time.Minute)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var calls int
			start := time.Now()
			res, err := tc.policy.call(t.Context(), func() (providers.Result, error) {
				calls++
				if calls <= len(tc.errs) {
					return providers.Result{}, tc.errs[calls-1]
				}
				return okResult, nil
			})
			require.Equal(t, tc.wantCalls, calls)
			require.Less(t, time.Since(start), 2*time.Second, "no long waits")
			if tc.wantErr == nil {
				require.NoError(t, err)
				require.Equal(t, okResult, res)
				return
			}
			require.Error(t, err)
			require.Equal(t, tc.wantErr.Error(), err.Error())
			require.Equal(t, providers.Describe(tc.wantErr), providers.Describe(err))
		})
	}
}

func TestInAttemptCallWaitsForRateLimitHint(t *testing.T) {
	t.Parallel()

	p := InAttempt{MaxRetries: 3, Backoff: time.Millisecond, MaxRateLimitWait: time.Second}
	var calls int
	var second time.Time
	start := time.Now()
	_, err := p.call(t.Context(), func() (providers.Result, error) {
		calls++
		if calls == 1 {
			return providers.Result{}, rateLimitedErr("429", 150*time.Millisecond)
		}
		second = time.Now()
		return providers.Result{StatusCode: 200}, nil
	})
	require.NoError(t, err)
	require.Equal(t, 2, calls)
	require.GreaterOrEqual(t, second.Sub(start), 150*time.Millisecond, "waited for the hint")
}

func TestInAttemptCallStopsOnCancel(t *testing.T) {
	t.Parallel()

	t.Run("cancelled while waiting", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		p := InAttempt{MaxRetries: 10, Backoff: 10 * time.Second, MaxRateLimitWait: time.Second}
		var calls atomic.Int32
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, err := p.call(ctx, func() (providers.Result, error) {
			calls.Add(1)
			return providers.Result{}, notSentErr("dial tcp: connection refused")
		})
		require.Less(t, time.Since(start), 2*time.Second)
		require.Equal(t, int32(1), calls.Load())
		require.ErrorContains(t, err, "dial tcp: connection refused")
		require.ErrorContains(t, err, "context canceled")
		// The provider's error stays reachable for classification.
		require.True(t, providers.Describe(err).NotSent)
	})

	t.Run("cancelled during the call", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		p := InAttempt{MaxRetries: 10, Backoff: time.Millisecond}
		var calls int
		_, err := p.call(ctx, func() (providers.Result, error) {
			calls++
			cancel()
			return providers.Result{}, notSentErr("dial tcp: operation was canceled")
		})
		require.Equal(t, 1, calls)
		require.EqualError(t, err, "dial tcp: operation was canceled")
	})

	t.Run("already cancelled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		p := InAttempt{MaxRetries: 10, Backoff: time.Millisecond}
		var calls int
		_, err := p.call(ctx, func() (providers.Result, error) {
			calls++
			return providers.Result{}, notSentErr("n")
		})
		require.Equal(t, 1, calls)
		require.Error(t, err)
	})
}

// TestInAttemptCallOnLastAttempt: on a task's last attempt a rate-limit
// hint is waited out in place as long as it ends by LastAttemptUntil, past
// MaxRateLimitWait and MaxRetries, because sending the task back would
// archive it; a hint that ends later, or none, still ends the attempt.
func TestInAttemptCallOnLastAttempt(t *testing.T) {
	t.Parallel()
	p := InAttempt{MaxRetries: 1, Backoff: time.Millisecond, MaxRateLimitWait: 10 * time.Millisecond}
	tests := []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   bool
	}{
		{name: "hints past MaxRateLimitWait and MaxRetries", wantCalls: 4,
			errs: []error{rateLimitedErr("local", 50*time.Millisecond), rateLimitedErr("local", 50*time.Millisecond), rateLimitedErr("429", 100*time.Millisecond)}},
		{name: "hint past the wait budget", wantCalls: 1, wantErr: true,
			errs: []error{rateLimitedErr("429", 30*time.Second)}},
		{name: "no hint", wantCalls: 1, wantErr: true,
			errs: []error{rateLimitedErr("429", 0)}},
		{name: "maybe sent is never retried", wantCalls: 1, wantErr: true,
			errs: []error{transientErr("read: connection reset")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// 20 s left: waits may last until 10 s before the deadline.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var calls int
			_, err := p.call(providers.WithLastAttempt(ctx), func() (providers.Result, error) {
				calls++
				if calls <= len(tc.errs) {
					return providers.Result{}, tc.errs[calls-1]
				}
				return providers.Result{StatusCode: 200}, nil
			})
			require.Equal(t, tc.wantCalls, calls)
			require.Equal(t, tc.wantErr, err != nil, "err: %v", err)
		})
	}
}

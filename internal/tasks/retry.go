package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hibiken/asynq"

	"github.com/certmail/certmail/internal/providers"
)

// RetryPolicy is the queue-level schedule: exponential, jittered, from Base
// doubling up to Max. It is configuration, not state, so asynq can call
// RetryDelay from any goroutine.
type RetryPolicy struct {
	Base time.Duration
	Max  time.Duration
	// Jitter is backoff/v4's randomization factor; 0 means 0.2.
	Jitter float64
	// RateLimitWait is used when a provider rate-limits without a hint.
	RateLimitWait time.Duration
}

// DefaultRetryPolicy is the worker's default schedule: the settings table in
// cmd/worker takes the defaults of RETRY_BASE, RETRY_MAX and RATE_LIMIT_WAIT
// from it, and a test there checks them against the README.
var DefaultRetryPolicy = RetryPolicy{Base: 30 * time.Second, Max: time.Hour, Jitter: 0.2, RateLimitWait: 30 * time.Second}

func (p RetryPolicy) exponential() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.Base
	b.MaxInterval = p.Max
	b.Multiplier = 2
	b.RandomizationFactor = p.Jitter
	if b.RandomizationFactor == 0 {
		b.RandomizationFactor = 0.2
	}
	b.MaxElapsedTime = 0 // asynq's MaxRetry bounds the attempts, not a clock
	b.Reset()
	return b
}

// Delay returns the wait before retry n (0-based, asynq's Retried count).
// backoff/v4's ExponentialBackOff is stateful, so each call builds a fresh
// one and steps it n+1 times; the result lies within Base·2ⁿ ± the jitter,
// and never above Max: backoff/v4 caps before jittering, so a capped delay
// would otherwise overshoot Max by up to the jitter.
func (p RetryPolicy) Delay(n int) time.Duration {
	b := p.exponential()
	var d time.Duration
	for i := 0; i <= min(n, 64); i++ { // capped long before 64 doublings
		d = b.NextBackOff()
	}
	if p.Max > 0 {
		d = min(d, p.Max)
	}
	return d
}

// RetryDelay is asynq's Config.RetryDelayFunc: a rate-limited attempt waits
// for the provider's hint, everything else follows the exponential schedule.
//
// A refusal by our own limiter comes back early by half of the wait the
// limiter takes in place on its return (WaitsOnReturn), and the limiter
// sleeps the rest to the exact slot. asynq scores retries in whole seconds
// and moves due ones to pending once per DelayedTaskCheckInterval (1 s in
// the worker), so a task requeued for exactly its wait reaches the worker
// anywhere from 1 s early to 1 s late (docs/asynq.md §3). Late is what
// costs: the rolling window's next slots open from the arrivals of the
// last, so each second lost at one window boundary is lost again at every
// later one. Half of the limiter's 3 s lands the task 2.5 s to 0.5 s before
// its slot, inside the in-place wait, with room for the pickup.
func (p RetryPolicy) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var rl *RateLimitError
	if errors.As(err, &rl) {
		d := rl.RetryIn
		if d <= 0 {
			d = p.RateLimitWait
		}
		d -= max(rl.WaitsOnReturn, 0) / 2
		return max(d, time.Second) // asynq schedules in whole seconds
	}
	return p.Delay(n)
}

// RateLimitError sends a rate-limited task back to the queue without
// spending its retry budget (see IsFailure).
type RateLimitError struct {
	RetryIn time.Duration
	// WaitsOnReturn is providers.Detail.WaitsOnReturn: how long the guard
	// that refused waits in place when the task comes back.
	WaitsOnReturn time.Duration
	Err           error
}

func (e *RateLimitError) Error() string { return e.Err.Error() }
func (e *RateLimitError) Unwrap() error { return e.Err }

// IsFailure is asynq's Config.IsFailure: rate-limited attempts are not
// failures, so Retried is not incremented for them.
func IsFailure(err error) bool {
	var rl *RateLimitError
	return !errors.As(err, &rl)
}

// deadError archives a task at once (asynq.SkipRetry) while its text, which
// asynq stores as LastErr and the dashboard shows, stays the provider's own.
type deadError struct{ err error }

func (e *deadError) Error() string   { return e.err.Error() }
func (e *deadError) Unwrap() []error { return []error{e.err, asynq.SkipRetry} }

// InAttempt bounds the retries made inside one attempt. They are allowed only
// for requests that provably never reached the provider and for short rate
// limit waits: anything else may already have sent an email.
type InAttempt struct {
	// MaxRetries is the number of extra calls allowed in one attempt.
	MaxRetries uint64
	// Backoff is the first wait for a not-sent failure (doubles each time).
	Backoff time.Duration
	// MaxRateLimitWait is the longest provider wait hint honoured in-attempt;
	// longer hints go back to the queue.
	MaxRateLimitWait time.Duration
}

// DefaultInAttempt is the worker's in-attempt policy.
var DefaultInAttempt = InAttempt{MaxRetries: 3, Backoff: 200 * time.Millisecond, MaxRateLimitWait: 3 * time.Second}

// fits reports whether a wait of d ends before ctx's deadline: a wait that
// cannot goes back to the queue at once instead of ending in a timeout.
func fits(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > d
}

// retryInPlace decides whether an attempt's call that failed with err is
// made again inside the attempt, after what wait, and whether that retry
// counts against MaxRetries. retries counts the
// in-attempt retries so far, waitUntil is zero except on the task's last
// attempt (see call), exp is the schedule of not-sent retries.
//
//   - A short rate-limit hint (≤ MaxRateLimitWait) that ends before the
//     deadline is waited out, within MaxRetries.
//   - On the last attempt, any rate-limit hint that ends by waitUntil is
//     waited out too, without counting against MaxRetries: the limiter, the
//     in-flight cap and a provider's 429 all mean "not processed", and
//     returning it would archive the task.
//   - A request that provably never reached the provider is retried on exp,
//     within MaxRetries.
//   - Anything else may have sent an email: no retry.
func (p InAttempt) retryInPlace(ctx context.Context, err error, retries uint64, waitUntil time.Time, exp backoff.BackOff) (wait time.Duration, again, counts bool) {
	if ctx.Err() != nil {
		return 0, false, false
	}
	d := providers.Describe(err)
	switch {
	case d.Class == providers.RateLimited && d.RetryAfter > 0 && !waitUntil.IsZero() && time.Now().Add(d.RetryAfter).Before(waitUntil):
		return d.RetryAfter, true, false
	case d.Class == providers.RateLimited:
		// A long wait goes back to the queue, even for a request that was
		// never sent (our own limiter): retrying sooner cannot help.
		ok := retries < p.MaxRetries && d.RetryAfter > 0 && d.RetryAfter <= p.MaxRateLimitWait && fits(ctx, d.RetryAfter)
		return d.RetryAfter, ok, true
	case d.NotSent && retries < p.MaxRetries:
		return exp.NextBackOff(), true, true
	default:
		return 0, false, false
	}
}

// call runs fn, retrying in-attempt only where that cannot duplicate an
// email (retryInPlace). On a task's last attempt (ctx marked with
// providers.WithLastAttempt) rate-limit waits are taken in place up to
// providers.LastAttemptUntil instead of being sent back: asynq archives a
// task whose last attempt returns any error, a rate limit included
// (docs/asynq.md §4). The local guards wait in place on their own then;
// this covers a provider's 429 with a hint.
func (p InAttempt) call(ctx context.Context, fn func() (providers.Result, error)) (providers.Result, error) {
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval = max(p.Backoff, time.Millisecond)
	exp.MaxElapsedTime = 0
	exp.Reset()
	waitUntil, _ := providers.LastAttemptUntil(ctx)
	var retries uint64
	for {
		res, err := fn()
		if err == nil {
			return res, nil
		}
		wait, again, counts := p.retryInPlace(ctx, err, retries, waitUntil, exp)
		if !again {
			return res, err
		}
		if counts {
			retries++
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			// Report the provider's last answer, which says more than
			// "context canceled".
			return res, fmt.Errorf("%w (stopped retrying: %v)", err, ctx.Err())
		case <-t.C:
		}
	}
}

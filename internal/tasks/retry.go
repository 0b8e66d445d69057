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
func (p RetryPolicy) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var rl *RateLimitError
	if errors.As(err, &rl) {
		d := rl.RetryIn
		if d <= 0 {
			d = p.RateLimitWait
		}
		return max(d, time.Second) // asynq schedules in whole seconds
	}
	return p.Delay(n)
}

// RateLimitError sends a rate-limited task back to the queue without
// spending its retry budget (see IsFailure).
type RateLimitError struct {
	RetryIn time.Duration
	Err     error
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

// hintBackOff waits for the provider's hint after a rate limit and follows
// the exponential schedule otherwise.
type hintBackOff struct {
	exp  *backoff.ExponentialBackOff
	hint time.Duration
}

func (h *hintBackOff) NextBackOff() time.Duration {
	if h.hint > 0 {
		d := h.hint
		h.hint = 0
		return d
	}
	return h.exp.NextBackOff()
}

func (h *hintBackOff) Reset() { h.exp.Reset(); h.hint = 0 }

// fits reports whether a wait of d ends before ctx's deadline: a wait that
// cannot goes back to the queue at once instead of ending in a timeout.
func fits(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > d
}

// call runs fn, retrying in-attempt only where that cannot duplicate an email.
func (p InAttempt) call(ctx context.Context, fn func() (providers.Result, error)) (providers.Result, error) {
	exp := backoff.NewExponentialBackOff()
	exp.InitialInterval = max(p.Backoff, time.Millisecond)
	exp.MaxElapsedTime = 0
	hb := &hintBackOff{exp: exp}
	b := backoff.WithContext(backoff.WithMaxRetries(hb, p.MaxRetries), ctx)
	var last error
	res, err := backoff.RetryWithData(func() (providers.Result, error) {
		r, err := fn()
		if err == nil {
			return r, nil
		}
		last = err
		if ctx.Err() != nil {
			return r, backoff.Permanent(err)
		}
		d := providers.Describe(err)
		switch {
		case d.Class == providers.RateLimited && d.RetryAfter > 0 && d.RetryAfter <= p.MaxRateLimitWait && fits(ctx, d.RetryAfter):
			hb.hint = d.RetryAfter
			return r, err
		case d.Class == providers.RateLimited:
			// A long wait goes back to the queue, even for a request that was
			// never sent (our own limiter): retrying sooner cannot help.
			return r, backoff.Permanent(err)
		case d.NotSent:
			return r, err
		default:
			return r, backoff.Permanent(err)
		}
	}, b)
	if err != nil && last != nil && !errors.Is(err, last) {
		// The context ended while waiting between calls: report the
		// provider's last answer, which says more than "context canceled".
		err = fmt.Errorf("%w (stopped retrying: %v)", last, err)
	}
	return res, err
}

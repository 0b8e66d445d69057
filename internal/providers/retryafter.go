package providers

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter caps every wait a provider asks for (HTTP Retry-After). A
// rate-limited task sleeps in the queue for the hint without spending its
// budget, so an absurd hint ("31536000") would park it for a year; an hour
// is longer than any documented provider window and short enough that a
// task which must wait longer simply asks again.
const MaxRetryAfter = time.Hour

// ParseRetryAfter parses an HTTP Retry-After value, delay-seconds or an
// HTTP-date relative to now, capped at MaxRetryAfter. ok is false when the
// value is absent, malformed or negative; a date in the past is a wait of 0.
// Huge values saturate at the cap instead of overflowing time.Duration.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' || v[0] == '-' || v[0] == '+' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			// ParseUint reports out-of-range for too many digits: still a
			// number of seconds, just an absurd one.
			if errors.Is(err, strconv.ErrRange) {
				return MaxRetryAfter, true
			}
			return 0, false
		}
		if secs > uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	// Sub saturates rather than overflows for dates centuries away.
	d = max(t.Sub(now), 0)
	// HTTP dates have a one-second resolution.
	return min(d.Round(time.Second), MaxRetryAfter), true
}

// CallReserve is the time a call keeps for itself when it waited in place
// on a task's last attempt (see WithLastAttempt).
const CallReserve = 10 * time.Second

type lastAttemptKey struct{}

// WithLastAttempt marks ctx as the call of a task's last attempt. asynq
// archives a task whose last attempt returns any error, a rate limit
// included (docs/asynq.md §4), so on such a call every local refusal — the
// rate limiter's, the in-flight cap's, an open outage circuit's — waits in
// place instead of sending the task back, until LastAttemptUntil: early
// enough to leave the call min(half the time left, CallReserve) of ctx's
// deadline (CallReserve from now without one).
func WithLastAttempt(ctx context.Context) context.Context {
	until := time.Now().Add(CallReserve)
	if dl, ok := ctx.Deadline(); ok {
		until = dl.Add(-min(time.Until(dl)/2, CallReserve))
	}
	return context.WithValue(ctx, lastAttemptKey{}, until)
}

// LastAttemptUntil reports whether ctx is a last attempt's call
// (WithLastAttempt) and until when it may wait in place.
func LastAttemptUntil(ctx context.Context) (time.Time, bool) {
	until, ok := ctx.Value(lastAttemptKey{}).(time.Time)
	return until, ok
}

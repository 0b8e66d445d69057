// Package ratelimit keeps certmail under a provider's request limits across
// every worker process, before the provider has to say no.
//
// DigiCert allows 100 requests per 5 s and 1,000 per 3 min per API key,
// rolling; past either, every request gets 429 for "a while". Bouncing off
// 429s works (the handler sends the task back without spending its budget)
// but keeps the account at the limit. So each provider client can be wrapped
// in a Resender that first reserves a slot under every configured rule at
// once, in one Redis script shared by all workers (rdb.Limiter: a
// sliding-window log per rule, so each rule holds in every rolling window,
// and a refusal by one rule takes nothing from another). A short wait, of
// exactly the time until the blocking grant leaves its window, is taken in
// place; a longer one, or one that would outlast the attempt, comes back
// as a rate-limited error that never reached the provider, whose
// RetryAfter is that exact wait.
//
// GCRA (github.com/go-redis/redis_rate, used before) cannot give that
// guarantee with Burst = N: a full burst, then the refill, put up to 2N
// requests in one window (136 in 5 s against DigiCert's 100 were seen).
//
// Limiter keys hold a hash of the API key, never the key itself; the rdb
// package names them (under its key prefix, like every certmail key) and runs
// the limiter.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
)

// Rule allows N requests in every rolling window of length Per.
type Rule struct {
	N   int
	Per time.Duration
}

func (r Rule) String() string { return fmt.Sprintf("%d/%s", r.N, r.Per) }

// DigiCertDefault is DigiCert's documented limit (docs/digicert.md §5).
const DigiCertDefault = "100/5s,1000/3m"

// ParseRules parses "N/DURATION[,N/DURATION…]", e.g. "100/5s,1000/3m".
// Empty, "0" and "off" mean no limit.
func ParseRules(s string) ([]Rule, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" || strings.EqualFold(s, "off") {
		return nil, nil
	}
	var rules []Rule
	for _, part := range strings.Split(s, ",") {
		n, per, ok := strings.Cut(strings.TrimSpace(part), "/")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count < 1 {
			return nil, fmt.Errorf("%q: want N/DURATION like 100/5s", part)
		}
		d, err := time.ParseDuration(per)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("%q: want a period of at least 1s, like 5s or 3m", part)
		}
		rules = append(rules, Rule{N: count, Per: d})
	}
	return rules, nil
}

// Guard is added to a rule's period in the grant log. Redis grants slots
// at exact times, but a request reaches the provider some milliseconds
// after its grant, and not always the same number: two grants exactly one
// period apart could arrive a little less than a period apart, and a
// provider counting arrivals would see N+1 in one window. A 50th of the
// period, 50 ms to 250 ms, covers that scheduling and network jitter: 2% of
// the allowance for DigiCert's 100/5s (100 ms), 5% for a 1-s rule.
func Guard(per time.Duration) time.Duration {
	return min(max(per/50, 50*time.Millisecond), 250*time.Millisecond)
}

// Resender is a providers.Resender that waits for a slot before each call.
type Resender struct {
	next     providers.Resender
	limiter  *rdb.Limiter
	provider providers.Name
	credHash string // of the credential, never the credential
	rules    []Rule
	limits   []rdb.LimitRule
	maxWait  time.Duration

	// For /metrics, read at scrape time.
	waits, refusals, waitedNS atomic.Int64
}

// Waits is the number of waits for a slot taken in place so far.
func (r *Resender) Waits() int64 { return r.waits.Load() }

// Refusals is the number of calls sent back to the queue to wait for a
// slot (recorded as local_rate_limit) so far.
func (r *Resender) Refusals() int64 { return r.refusals.Load() }

// WaitedSeconds is the time spent waiting in place for slots so far.
func (r *Resender) WaitedSeconds() float64 { return time.Duration(r.waitedNS.Load()).Seconds() }

// Wrap returns next limited by rules, shared by every worker using the same
// credential (identified by its hash). With no rules it returns next.
// Waits up to maxWait are taken in place; longer ones return an *Error.
func Wrap(next providers.Resender, c redis.UniversalClient, provider providers.Name, credential string, rules []Rule, maxWait time.Duration) providers.Resender {
	if len(rules) == 0 {
		return next
	}
	sum := sha256.Sum256([]byte(credential))
	limits := make([]rdb.LimitRule, len(rules))
	for i, ru := range rules {
		limits[i] = rdb.LimitRule{N: ru.N, Per: ru.Per + Guard(ru.Per)}
	}
	return &Resender{
		next: next, limiter: rdb.New(c).NewLimiter(), provider: provider, rules: rules, limits: limits, maxWait: maxWait,
		credHash: hex.EncodeToString(sum[:8]),
	}
}

// jitter spreads the wake-ups of workers told the same wait, so that they
// do not reach Redis in the same millisecond. A slot freed at t is taken
// by whoever asks first after t; the jitter costs at most this much.
const jitter = 5 * time.Millisecond

// Resend implements providers.Resender.
//
// It reserves a slot under every rule at once. When refused it sleeps the
// exact wait Redis returned (plus a few ms of jitter) and asks again, as
// long as the waits taken in this call stay within maxWait (on a task's
// last attempt: end by providers.LastAttemptUntil, as asynq would archive
// the task sent back) and end before ctx's deadline; otherwise it returns a rate-limited *Error whose
// RetryAfter is that exact wait, so the task goes back to the queue for
// just that long, budget untouched. It never polls faster than the waits.
func (r *Resender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	var waited time.Duration
	for {
		res, err := r.limiter.Reserve(ctx, string(r.provider), r.credHash, r.limits)
		if err != nil {
			if ctx.Err() != nil {
				return providers.Result{}, r.stopped(ctx, 0, Rule{})
			}
			return providers.Result{}, &Error{Provider: r.provider, Class: providers.Transient, Err: fmt.Errorf("rate limiter: %w", err)}
		}
		if res.Wait == 0 {
			return r.next.Resend(ctx, req)
		}
		rule := r.rules[min(max(res.Rule, 0), len(r.rules)-1)]
		sleep := res.Wait + rand.N(jitter)
		limited := &Error{Provider: r.provider, Class: providers.RateLimited, Rule: rule, RetryAfter: res.Wait}
		if until, last := providers.LastAttemptUntil(ctx); last {
			// Sent back, a task with no retry left would be archived:
			// wait as long as the attempt allows instead.
			if time.Now().Add(res.Wait).After(until) {
				r.refusals.Add(1)
				return providers.Result{}, limited
			}
		} else if waited+res.Wait > r.maxWait {
			// Back from the queue, a fresh call waits up to maxWait in
			// place, so the task may return early (tasks.RetryDelay). Not
			// so after the refusals for a deadline: the next attempt's may
			// be as short.
			limited.WaitsOnReturn = r.maxWait
			r.refusals.Add(1)
			return providers.Result{}, limited
		}
		if dl, ok := ctx.Deadline(); ok {
			left := time.Until(dl)
			if left <= res.Wait {
				// The slot would come after the attempt's end: waiting for
				// it would only turn a requeue into a timeout. (The same
				// test as tasks.InAttempt's, so it does not wait either.)
				r.refusals.Add(1)
				return providers.Result{}, limited
			}
			sleep = min(sleep, left-time.Millisecond)
		}
		slot := time.Now().Add(res.Wait)
		r.waits.Add(1)
		start := time.Now()
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			r.waitedNS.Add(int64(time.Since(start)))
			return providers.Result{}, r.stopped(ctx, time.Until(slot), rule)
		case <-t.C:
		}
		r.waitedNS.Add(int64(time.Since(start)))
		waited += sleep
	}
}

// stopped is the error of a call whose context ended while it waited for a
// slot: a deadline is a rate-limit requeue (nothing was sent, the wait is
// what held it), a cancellation (shutdown, the dashboard) stays one.
func (r *Resender) stopped(ctx context.Context, left time.Duration, rule Rule) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		r.refusals.Add(1)
		return &Error{Provider: r.provider, Class: providers.RateLimited, Rule: rule, RetryAfter: max(left, time.Millisecond)}
	}
	return &Error{Provider: r.provider, Class: providers.Transient, Rule: rule, Err: ctx.Err()}
}

// Error is a call that the limiter held back: it never reached the provider.
type Error struct {
	Provider   providers.Name
	Class      providers.Class
	Rule       Rule
	RetryAfter time.Duration
	// WaitsOnReturn is how long the limiter will wait in place when the
	// task comes back (its maxWait), for providers.Detail.
	WaitsOnReturn time.Duration
	Err           error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: request not sent: %v (%s)", e.Provider, e.Err, e.Class)
	}
	return fmt.Sprintf("%s: request not sent: our rate limit %s reached, next slot in %s (%s)",
		e.Provider, e.Rule, e.RetryAfter.Round(time.Millisecond), e.Class)
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Detail implements providers.DetailedError.
func (e *Error) Detail() providers.Detail {
	msg := "local rate limit " + e.Rule.String() + " reached, next slot in " + e.RetryAfter.Round(time.Millisecond).String()
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return providers.Detail{Provider: e.Provider, Class: e.Class, Code: "local_rate_limit", Message: msg, RetryAfter: e.RetryAfter, NotSent: true, WaitsOnReturn: e.WaitsOnReturn}
}

var _ providers.Resender = (*Resender)(nil)

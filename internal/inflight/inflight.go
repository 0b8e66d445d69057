// Package inflight caps how many calls to one provider credential are in
// flight at once across every worker process.
//
// OpenSRS answers 310 ("too many simultaneous connections") past its cap
// and recommends one or two connections per reseller account
// (docs/opensrs.md); a fleet of workers, each with its own concurrency,
// would pass that at once. So a provider client can be wrapped in a
// Resender that takes a slot of a Redis semaphore (rdb.AcquireSlot) before
// each call and gives it back after, whatever the call's end (success,
// error, panic, cancellation).
//
// Each slot is a lease: the call's limit (PROVIDER_TIMEOUT, or what is left
// of the attempt when that is shorter) plus LeaseMargin. A worker killed
// while holding a slot never gives it back, and the slot comes back by
// itself once the lease has passed; until then the cap is one slot short.
// A live worker whose release cannot reach Redis (a Sentinel failover)
// tries it again every 500 ms until it lands or the lease has passed.
// The lease outlives any call a live worker can make, so a slow call never
// loses its slot to another.
//
// A call that finds the cap full waits in place: it tries again when a slot
// of this process is released, or after a short jittered poll (20–100 ms;
// slots released by other processes are seen that way), never after the
// earliest lease could expire. It waits up to MaxWait (DefaultMaxWait, 10 s
// in the worker; on a task's last attempt until providers.LastAttemptUntil,
// as asynq would archive the task sent back) and never past its context's
// deadline; then it returns an *Error of class
// providers.RateLimited that never reached the provider, so the task goes
// back to the queue without spending its retry budget, and its attempt is
// recorded with provider code "in_flight_cap".
//
// Semaphore keys hold a hash of the credential, never the credential; the
// rdb package names them and runs the script.
package inflight

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
)

// Code is the provider code recorded for a call held back by the cap.
const Code = "in_flight_cap"

// LeaseMargin is added to a call's limit in its slot's lease: it covers
// the wait for the semaphore's reply and the release after the call, and
// bounds how long a killed worker's slot stays taken beyond that limit.
const LeaseMargin = 10 * time.Second

// Poll bounds of the wait for a slot released by another process.
const (
	pollMin = 20 * time.Millisecond
	pollMax = 100 * time.Millisecond
)

// deadlineSlack is how long before its context's deadline a wait gives
// up, so that it ends as a requeue and not as an expired context.
const deadlineSlack = 100 * time.Millisecond

// releaseTimeout bounds the release after the call; a release that fails
// leaves the slot to its lease.
const releaseTimeout = 2 * time.Second

// DefaultMaxWait is the worker's bound on the in-place wait for a slot.
// It is longer than the rate limiter's: the calls ahead hold their slots
// for a provider round trip each, so a wait of a few rounds is common under
// a backlog, and a task sent back instead costs at least asynq's forwarder
// interval (5 s) before it can run, while the slots it could have used go
// idle if every waiter gives up at once.
const DefaultMaxWait = 10 * time.Second

// Config is one provider credential's cap.
type Config struct {
	Provider providers.Name
	// Credential identifies the account; only its hash reaches Redis.
	Credential string
	// Cap is the number of calls in flight at once; 0 means no cap.
	Cap int
	// CallLimit is the longest a provider call may take (PROVIDER_TIMEOUT).
	CallLimit time.Duration
	// MaxWait is the longest in-place wait for a slot (DefaultMaxWait).
	MaxWait time.Duration
	// RetriedInPlace is the longest rate-limit wait the caller retries in
	// place (tasks.InAttempt.MaxRateLimitWait): a task that got no slot is
	// sent back for longer, so that it goes back to the queue instead.
	RetriedInPlace time.Duration
}

// Resender is a providers.Resender that holds one slot of the fleet-wide
// cap during each call.
type Resender struct {
	next     providers.Resender
	rdb      *rdb.Client
	cfg      Config
	credHash string
	// freed wakes one waiter of this process when a slot is released here.
	freed chan struct{}
	// inUse and waiting count this process's holders and waiters.
	inUse, waiting atomic.Int64
}

// InUse is the number of slots this process holds now.
func (r *Resender) InUse() int64 { return r.inUse.Load() }

// Waiting is the number of calls of this process waiting for a slot.
func (r *Resender) Waiting() int64 { return r.waiting.Load() }

// Unwrap returns the wrapped Resender, so /metrics finds the limiter in it.
func (r *Resender) Unwrap() providers.Resender { return r.next }

// Wrap returns next behind the cap, shared by every worker using the same
// credential through c. With Cap 0 it returns next.
func Wrap(next providers.Resender, c redis.UniversalClient, cfg Config) providers.Resender {
	if cfg.Cap <= 0 {
		return next
	}
	return &Resender{next: next, rdb: rdb.New(c), cfg: cfg, credHash: rdb.CredentialHash(cfg.Credential), freed: make(chan struct{}, 1)}
}

// Resend implements providers.Resender.
func (r *Resender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	token := newToken()
	r.waiting.Add(1)
	err := r.acquire(ctx, token)
	r.waiting.Add(-1)
	if err != nil {
		return providers.Result{}, err
	}
	r.inUse.Add(1)
	defer r.release(ctx, token)
	return r.next.Resend(ctx, req)
}

// lease is how long a slot taken now is held at most: the call's limit,
// capped by ctx's deadline, plus LeaseMargin.
func (r *Resender) lease(ctx context.Context) time.Duration {
	limit := r.cfg.CallLimit
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); limit <= 0 || left < limit {
			limit = max(left, 0)
		}
	}
	return limit + LeaseMargin
}

func (r *Resender) acquire(ctx context.Context, token string) error {
	start := time.Now()
	giveUp := start.Add(r.cfg.MaxWait)
	if dl, ok := ctx.Deadline(); ok {
		// The wait comes out of the call's time: leave it at least half,
		// or a slot taken late would time out and be charged as a failure.
		giveUp = minTime(giveUp, start.Add(dl.Sub(start)/2), dl.Add(-deadlineSlack))
	}
	if until, last := providers.LastAttemptUntil(ctx); last {
		// Sent back, a task with no retry left would be archived.
		giveUp = until
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ok, untilFree, err := r.rdb.AcquireSlot(ctx, string(r.cfg.Provider), r.credHash, token, r.cfg.Cap, r.lease(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return r.stopped(ctx, start)
			}
			return &Error{Provider: r.cfg.Provider, Class: providers.Transient, Cap: r.cfg.Cap, Err: fmt.Errorf("in-flight cap: %w", err)}
		}
		if ok {
			return nil
		}
		now := time.Now()
		if !now.Before(giveUp) {
			return &Error{Provider: r.cfg.Provider, Class: providers.RateLimited, Cap: r.cfg.Cap, Waited: now.Sub(start), RetryAfter: r.requeue(untilFree)}
		}
		wait := min(pollMin+rand.N(pollMax-pollMin), untilFree, giveUp.Sub(now))
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return r.stopped(ctx, start)
		case <-r.freed:
		case <-timer.C:
		}
	}
}

// stopped is the error of a wait whose context ended. A cancellation
// (shutdown, the dashboard) is reported as such; a deadline that passed
// while Redis was slow to answer is still only a wait for a slot, sent back
// like one: nothing reached the provider.
func (r *Resender) stopped(ctx context.Context, start time.Time) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Provider: r.cfg.Provider, Class: providers.RateLimited, Cap: r.cfg.Cap, Waited: time.Since(start), RetryAfter: r.requeue(0)}
	}
	return &Error{Provider: r.cfg.Provider, Class: providers.Transient, Cap: r.cfg.Cap, Err: ctx.Err()}
}

// requeue is how long a task that got no slot goes back to the queue
// for: a little longer than the caller's in-place retry honours (so it does
// go back), jittered so that tasks given up together do not return
// together, and not past the earliest lease's end if that comes later.
// Slots of live workers usually free long before their leases end, so the
// lease alone would park tasks needlessly.
func (r *Resender) requeue(untilFree time.Duration) time.Duration {
	floor := r.cfg.RetriedInPlace + time.Second
	return max(floor, min(untilFree, floor+rand.N(floor/2+1)))
}

// release gives the slot back even when ctx is done, and wakes a waiter of
// this process. A release that fails is tried again in the background.
func (r *Resender) release(ctx context.Context, token string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := r.rdb.ReleaseSlot(rctx, string(r.cfg.Provider), r.credHash, token); err != nil && !errors.Is(err, redis.ErrClosed) {
		go r.retryRelease(token, time.Now().Add(r.cfg.CallLimit+LeaseMargin))
	}
	r.inUse.Add(-1)
	r.wake()
}

// releaseRetry is the pause between two tries of a failed release.
const releaseRetry = 500 * time.Millisecond

// retryRelease tries a failed release again until it succeeds or the
// slot's lease has passed anyway. A release fails when Redis cannot be
// reached, as in the few seconds of a Sentinel failover: without the
// retry the slot stayed taken until its lease ended (PROVIDER_TIMEOUT +
// LeaseMargin, 100 s by default) although its call was over, and the cap
// of 2 held every OpenSRS call back that long. Releasing by token is
// idempotent and frees nothing of another holder.
func (r *Resender) retryRelease(token string, until time.Time) {
	for time.Now().Before(until) {
		time.Sleep(releaseRetry)
		ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
		err := r.rdb.ReleaseSlot(ctx, string(r.cfg.Provider), r.credHash, token)
		cancel()
		if err == nil {
			r.wake()
			return
		}
		if errors.Is(err, redis.ErrClosed) {
			return
		}
	}
}

// wake wakes one waiter of this process, if any.
func (r *Resender) wake() {
	select {
	case r.freed <- struct{}{}:
	default:
	}
}

func minTime(t time.Time, more ...time.Time) time.Time {
	for _, m := range more {
		if m.Before(t) {
			t = m
		}
	}
	return t
}

func newToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Error is a call the cap held back: it never reached the provider.
type Error struct {
	Provider   providers.Name
	Class      providers.Class
	Cap        int
	Waited     time.Duration
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: request not sent: %v (%s)", e.Provider, e.Err, e.Class)
	}
	return fmt.Sprintf("%s: request not sent: in-flight cap of %d reached, no slot within %s; next try in %s (%s)",
		e.Provider, e.Cap, e.Waited.Round(time.Millisecond), e.RetryAfter.Round(time.Second), e.Class)
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Detail implements providers.DetailedError.
func (e *Error) Detail() providers.Detail {
	msg := fmt.Sprintf("fleet-wide in-flight cap of %d calls reached", e.Cap)
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return providers.Detail{Provider: e.Provider, Class: e.Class, Code: Code, Message: msg, RetryAfter: e.RetryAfter, NotSent: true}
}

var _ providers.Resender = (*Resender)(nil)

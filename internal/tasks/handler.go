package tasks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redact"
)

// Recorder stores attempt outcomes; *outcome.Store implements it.
type Recorder interface {
	Record(ctx context.Context, a outcome.Attempt, dead *outcome.DeadLetter) error
	Claim(ctx context.Context, taskID, token string, ttl time.Duration) (outcome.ClaimState, time.Time, time.Duration, error)
}

// Observer receives every attempt for metrics; it may be nil.
type Observer interface {
	ObserveAttempt(provider string, o outcome.Outcome, providerLatency time.Duration)
}

// Handler runs the resend tasks of every configured provider. It is one
// struct holding its dependencies; the provider is picked by task type.
type Handler struct {
	// Resenders maps each configured provider to its client. Tasks of a
	// provider missing here are never fetched: the worker does not consume
	// that queue.
	Resenders map[providers.Name]providers.Resender
	Recorder  Recorder
	Observer  Observer
	Logger    *slog.Logger
	// ProviderTimeout caps one provider call (also capped by the task's
	// own deadline minus a margin to record the outcome).
	ProviderTimeout time.Duration
	InAttempt       InAttempt
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// running counts ProcessTask calls, so that the worker can keep Redis
	// open until each has recorded its attempt (see Wait).
	mu      sync.Mutex
	running int
	idle    chan struct{} // closed when running drops to 0
	// stopping is set by Stopping: a cancelled context then means asynq's
	// shutdown, which requeues the task, not a cancellation that archives it.
	stopping atomic.Bool
}

// RecordTimeout bounds the recording of one attempt. It runs on a context
// detached from the task's, so that an attempt interrupted by a shutdown or
// a deadline is still recorded and its claim released.
const RecordTimeout = 5 * time.Second

// Stopping tells the handler that the worker is shutting down; call it
// before asynq's Server.Shutdown. Attempts interrupted from then on are
// recorded as interrupted (asynq puts their tasks back to pending with the
// budget untouched) instead of dead.
func (h *Handler) Stopping() { h.stopping.Store(true) }

// Wait blocks until every ProcessTask call has returned, or ctx ends.
//
// asynq's Server.Shutdown requeues the tasks that outlast ShutdownTimeout and
// returns without waiting for their handlers; it cancels their contexts, so
// they stop promptly, but they still record the interrupted attempt and
// release the task's in-flight claim. Closing Redis before Wait returns would
// lose that record and leave the claim to block the requeued task until it
// expires.
func (h *Handler) Wait(ctx context.Context) error {
	h.mu.Lock()
	n, idle := h.running, h.idle
	h.mu.Unlock()
	if n == 0 {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		n = h.running
		h.mu.Unlock()
		return fmt.Errorf("%d task handler(s) still running: %w", n, ctx.Err())
	}
}

func (h *Handler) enter() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running == 0 {
		h.idle = make(chan struct{})
	}
	h.running++
}

func (h *Handler) leave() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running--
	if h.running == 0 {
		close(h.idle)
	}
}

// recordMargin is kept from the task deadline so the outcome of a call that
// ran out of time can still be written.
const recordMargin = 2 * time.Second

// Result is what a succeeded task stores as its asynq result.
type Result struct {
	Provider        string    `json:"provider"`
	OrderID         string    `json:"order_id"`
	Reference       string    `json:"reference,omitempty"`
	Attempt         int       `json:"attempt"`
	HTTPStatus      int       `json:"http_status,omitempty"`
	ProviderCode    string    `json:"provider_code,omitempty"`
	ProviderMessage string    `json:"provider_message,omitempty"`
	Duplicate       bool      `json:"duplicate_suppressed,omitempty"`
	CompletedAt     time.Time `json:"completed_at"`
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// ProcessTask implements asynq.Handler.
//
// Every exit records the attempt, and every exit on which asynq archives the
// task (SkipRetry, or a counted failure with no retry left) also writes the
// task's dead letter, so that none waits for the archive sweep.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) (err error) {
	h.enter()
	defer h.leave()
	start := h.now()
	id, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	// The payload is parsed once; Meta reads what it can of a broken one,
	// so that even its dead letter names the order.
	p, decodeErr := Decode(t.Type(), t.Payload())
	var orderID, ref string
	if decodeErr == nil {
		orderID, ref = p.Order(), p.Ref()
	} else {
		orderID, ref = Meta(t.Payload())
	}
	// Everything stored beside the payload (attempts, result, dead-letter
	// fields) and logged carries the reference masked; the payload keeps it.
	ref = redact.Emails(ref)
	a := outcome.Attempt{
		TaskID: id, Type: t.Type(), Queue: queue, Provider: queue,
		OrderID: orderID, Reference: ref, Attempt: retried + 1, At: start,
	}
	dead := func(class string, err error) *outcome.DeadLetter {
		return &outcome.DeadLetter{
			ID: id, Type: t.Type(), Queue: queue, Provider: queue, OrderID: orderID, Reference: ref,
			Payload: outcome.Payload(t.Payload()), Retried: retried, MaxRetry: maxRetry,
			LastError: redact.Emails(err.Error()), LastFailedAt: h.now(), Class: class, Source: "handler",
		}
	}
	defer func() {
		// asynq would turn a panic (say, in a provider client) into a
		// failure too, but without the attempt record that releases the
		// in-flight claim, and without a dead letter on the last attempt.
		if v := recover(); v != nil {
			h.Logger.ErrorContext(ctx, "task handler panicked", "task_id", id, "panic", redact.Emails(fmt.Sprint(v)), "stack", string(debug.Stack()))
			perr := errors.New(redact.Emails(fmt.Sprintf("panic: %v", v)))
			a.Class, a.Error = "panic", perr.Error()
			var dl *outcome.DeadLetter
			if a.Outcome = outcome.Retrying; retried >= maxRetry {
				a.Outcome, dl = outcome.Dead, dead("panic", perr)
			}
			h.finish(ctx, start, &a, dl, 0)
			err = perr
		}
	}()

	if decodeErr != nil {
		err := fmt.Errorf("invalid payload: %s", redact.Emails(decodeErr.Error()))
		a.Outcome, a.Class, a.Error = outcome.Dead, "invalid_payload", err.Error()
		h.finish(ctx, start, &a, dead("invalid_payload", err), 0)
		return &deadError{err}
	}
	a.Provider = string(p.Provider())
	last := retried >= maxRetry
	r, ok := h.Resenders[p.Provider()]
	if !ok {
		// Only reachable if a task sits in the wrong queue: the worker does
		// not consume queues of unconfigured providers.
		err := fmt.Errorf("provider %s is not configured on this worker", p.Provider())
		a.Class, a.Error = "configuration", err.Error()
		if last {
			a.Outcome = outcome.Dead
			h.finish(ctx, start, &a, dead("configuration", err), 0)
			return err
		}
		a.Outcome = outcome.Retrying
		h.finish(ctx, start, &a, nil, 0)
		return err
	}

	callCtx, cancel := h.callContext(ctx)
	defer cancel()
	state, at, err := h.claim(callCtx, id, &a, last)
	if err != nil {
		var rl *RateLimitError
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			err = fmt.Errorf("while waiting for another delivery: %w", err)
			return h.interrupted(ctx, start, &a, err, last, dead, 0)
		case errors.As(err, &rl):
			// Another delivery of this very task is calling the provider
			// (asynq redelivered it after a lease expiry or timeout): come
			// back when its claim has ended, without spending the budget.
			a.Outcome, a.Class, a.Error, a.RetryInMS = outcome.Retrying, "in_flight", err.Error(), rl.RetryIn.Milliseconds()
			h.finish(ctx, start, &a, nil, 0)
			return err
		case last && errors.Is(err, context.DeadlineExceeded):
			// On the last attempt claim waits for the other delivery; it held
			// the call until this attempt's deadline, and asynq now archives.
			err = errors.New("another delivery of this task held the provider call until this attempt's deadline")
			a.Outcome, a.Class, a.Error = outcome.Dead, "in_flight", err.Error()
			h.finish(ctx, start, &a, dead("in_flight", err), 0)
			return err
		case last:
			// Redis trouble with no retry left: asynq archives the task.
			err = errors.New(redact.Emails(err.Error()))
			a.Outcome, a.Class, a.Error = outcome.Dead, "retries_exhausted", err.Error()
			h.finish(ctx, start, &a, dead("retries_exhausted", err), 0)
			return err
		default:
			// Redis trouble: asynq retries.
			a.Outcome, a.Class, a.Error = outcome.Retrying, providers.Transient.String(), redact.Emails(err.Error())
			h.finish(ctx, start, &a, nil, 0)
			return err
		}
	}
	if state == outcome.AlreadySucceeded {
		// Delivered once already (a crash or lease loss came between the
		// provider's answer and asynq's ack): do not email twice.
		a.Outcome, a.Class = outcome.Succeeded, providers.Success.String()
		a.ProviderMessage = "already resent at " + at.UTC().Format(time.RFC3339) + "; duplicate delivery suppressed"
		res := Result{Provider: a.Provider, OrderID: orderID, Reference: ref, Attempt: a.Attempt,
			ProviderMessage: a.ProviderMessage, Duplicate: true, CompletedAt: h.now()}
		h.writeResult(ctx, t, res)
		h.finish(ctx, start, &a, nil, 0)
		return nil
	}

	callStart := h.now()
	res, err := h.InAttempt.call(callCtx, func() (providers.Result, error) { return r.Resend(callCtx, p.Request()) })
	latency := h.now().Sub(callStart)

	if err == nil {
		a.Outcome, a.Class = outcome.Succeeded, providers.Success.String()
		a.HTTPStatus, a.ProviderCode, a.ProviderMessage = res.StatusCode, res.Code, redact.Emails(res.Message)
		h.writeResult(ctx, t, Result{Provider: a.Provider, OrderID: orderID, Reference: ref, Attempt: a.Attempt,
			HTTPStatus: res.StatusCode, ProviderCode: res.Code, ProviderMessage: a.ProviderMessage, CompletedAt: h.now()})
		h.finish(ctx, start, &a, nil, latency)
		return nil
	}

	d := providers.Describe(err)
	msg := redact.Emails(err.Error())
	a.Class, a.HTTPStatus, a.ProviderCode, a.ProviderMessage, a.Error = d.Class.String(), d.StatusCode, d.Code, redact.Emails(d.Message), msg
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return h.interrupted(ctx, start, &a, errors.New(msg), last, dead, latency)
	case d.Class == providers.Permanent || d.Class == providers.Configuration:
		a.Outcome = outcome.Dead
		h.finish(ctx, start, &a, dead(d.Class.String(), errors.New(msg)), latency)
		return &deadError{errors.New(msg)}
	case d.Class == providers.RateLimited && !last:
		a.Outcome = outcome.RateLimited
		a.RetryInMS = d.RetryAfter.Milliseconds()
		h.finish(ctx, start, &a, nil, latency)
		return &RateLimitError{RetryIn: d.RetryAfter, Err: errors.New(msg)}
	case last:
		// asynq archives the task when this attempt fails (for a rate limit
		// too: a task with no budget left cannot bounce).
		a.Outcome = outcome.Dead
		class := "retries_exhausted"
		h.finish(ctx, start, &a, dead(class, errors.New(msg)), latency)
		return errors.New(msg)
	default:
		a.Outcome = outcome.Retrying
		h.finish(ctx, start, &a, nil, latency)
		return errors.New(msg)
	}
}

// interrupted records an attempt whose context was cancelled. At shutdown
// asynq has already put the task back to pending with its budget untouched
// (and ignores what the handler returns): the attempt is recorded as
// retrying, class "interrupted", which also releases the in-flight claim so
// the requeued task is not blocked. Any other cancellation (lease loss, the
// dashboard's cancel) is a failure to asynq, which archives the task when
// no retry is left: then the dead letter is written here.
func (h *Handler) interrupted(ctx context.Context, start time.Time, a *outcome.Attempt, err error, last bool,
	dead func(string, error) *outcome.DeadLetter, latency time.Duration) error {
	err = fmt.Errorf("interrupted: %w", err)
	a.Class, a.Error = "interrupted", err.Error()
	if last && !h.stopping.Load() {
		a.Outcome = outcome.Dead
		h.finish(ctx, start, a, dead("interrupted", err), latency)
		return err
	}
	a.Outcome = outcome.Retrying
	h.finish(ctx, start, a, nil, latency)
	return err
}

// claimSlack outlives the provider call in the in-flight claim, covering
// the outcome record that releases it.
const claimSlack = 10 * time.Second

// claim checks the task's success mark and claims the provider call for this
// delivery (a.Claim is set so that recording the attempt releases it). When
// another delivery holds the claim it returns a *RateLimitError to come back
// later, or, on the last attempt (asynq would archive a bounce), waits for
// the claim to end within ctx.
func (h *Handler) claim(ctx context.Context, id string, a *outcome.Attempt, last bool) (outcome.ClaimState, time.Time, error) {
	token := newToken()
	ttl := claimSlack
	if dl, ok := ctx.Deadline(); ok {
		ttl += time.Until(dl)
	}
	for {
		state, at, left, err := h.Recorder.Claim(ctx, id, token, ttl)
		if err != nil {
			return 0, time.Time{}, err
		}
		switch state {
		case outcome.Claimed:
			a.Claim = token
			return state, at, nil
		case outcome.AlreadySucceeded:
			return state, at, nil
		}
		if !last {
			return 0, time.Time{}, &RateLimitError{RetryIn: left + time.Second,
				Err: fmt.Errorf("another delivery of this task is calling the provider; retrying in %s", (left + time.Second).Round(time.Second))}
		}
		select {
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		case <-time.After(min(max(left, 50*time.Millisecond), time.Second)):
		}
	}
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// callContext bounds one provider call by ProviderTimeout and by the task's
// deadline less recordMargin.
func (h *Handler) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := h.ProviderTimeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) - recordMargin
		if left < time.Second {
			left = time.Until(dl) / 2
		}
		if timeout <= 0 || left < timeout {
			timeout = left
		}
	}
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}

func (h *Handler) writeResult(ctx context.Context, t *asynq.Task, res Result) {
	b, err := json.Marshal(res)
	if err != nil {
		return
	}
	if w := t.ResultWriter(); w != nil {
		if _, err := w.Write(b); err != nil {
			h.Logger.WarnContext(ctx, "could not store task result", "error", err.Error())
		}
	}
}

// finish records the attempt (even when the task's context has ended),
// reports it to the observer and logs it.
func (h *Handler) finish(ctx context.Context, start time.Time, a *outcome.Attempt, dead *outcome.DeadLetter, latency time.Duration) {
	a.DurationMS = float64(h.now().Sub(start).Microseconds()) / 1000
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordTimeout)
	defer cancel()
	recErr := h.Recorder.Record(rctx, *a, dead)
	if h.Observer != nil {
		h.Observer.ObserveAttempt(a.Provider, a.Outcome, latency)
	}
	attrs := []any{
		"task_id", a.TaskID, "type", a.Type, "provider", a.Provider, "order_id", a.OrderID,
		"attempt", a.Attempt, "outcome", string(a.Outcome), "duration_ms", a.DurationMS,
	}
	if a.Reference != "" {
		attrs = append(attrs, "reference", a.Reference)
	}
	if a.Class != "" && a.Outcome != outcome.Succeeded {
		attrs = append(attrs, "class", a.Class)
	}
	if a.HTTPStatus != 0 {
		attrs = append(attrs, "http_status", a.HTTPStatus)
	}
	if a.ProviderCode != "" {
		attrs = append(attrs, "provider_code", a.ProviderCode)
	}
	if a.Error != "" {
		attrs = append(attrs, "error", a.Error)
	}
	if a.RetryInMS > 0 {
		attrs = append(attrs, "retry_in_ms", a.RetryInMS)
	}
	level := slog.LevelInfo
	switch a.Outcome {
	case outcome.Retrying, outcome.RateLimited:
		level = slog.LevelWarn
	case outcome.Dead:
		level = slog.LevelError
	}
	if recErr != nil {
		attrs = append(attrs, "record_error", recErr.Error())
		level = slog.LevelError
	}
	h.Logger.Log(ctx, level, "resend attempt", attrs...)
}

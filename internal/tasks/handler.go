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

// resultRecorder is a Recorder that also stores the task's asynq result in
// the attempt's own round trip (*outcome.Store does); with any other
// Recorder the result goes through asynq's ResultWriter first.
type resultRecorder interface {
	RecordWithResult(ctx context.Context, a outcome.Attempt, dead *outcome.DeadLetter, result []byte) error
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

// SuccessRecordTimeout bounds the retries of a success's record when Redis
// fails it (a restart, a failover): each further try is bounded by
// RecordTimeout, and they stop at once when the worker shuts down.
const SuccessRecordTimeout = 30 * time.Second

// retrySuccessRecord retries record every 250 ms (doubling to 2 s) until it
// succeeds, SuccessRecordTimeout passes or the worker stops; it returns the
// last error.
func (h *Handler) retrySuccessRecord(ctx context.Context, taskID string, record func(context.Context) error, err error) error {
	deadline := time.Now().Add(SuccessRecordTimeout)
	wait := 250 * time.Millisecond
	for time.Now().Before(deadline) && !h.stopping.Load() {
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(RecordTimeout, time.Until(deadline)))
		err = record(rctx)
		cancel()
		if err == nil {
			h.Logger.WarnContext(ctx, "success recorded after Redis came back", "task_id", redact.Emails(taskID))
			return nil
		}
	}
	return err
}

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

// ProcessTask implements asynq.Handler: decode, claim, call, then decide
// (decide.go) and record.
//
// Every exit records the attempt, and every exit on which asynq archives the
// task (SkipRetry, or a counted failure with no retry left) also writes the
// task's dead letter, so that none waits for the archive sweep.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) (err error) {
	growStack()
	h.enter()
	defer h.leave()
	at := h.begin(ctx, t)
	defer func() {
		if v := recover(); v != nil {
			h.Logger.ErrorContext(ctx, "task handler panicked", "task_id", at.rec.TaskID, "panic", redact.Emails(fmt.Sprint(v)), "stack", string(debug.Stack()))
			err = h.settle(ctx, at, stepPanic, errors.New(redact.Emails(fmt.Sprintf("panic: %v", v))), 0)
		}
	}()
	if at.decodeErr != nil {
		return h.settle(ctx, at, stepDecode, at.decodeErr, 0)
	}
	at.rec.Provider = string(at.payload.Provider())
	r, ok := h.Resenders[at.payload.Provider()]
	if !ok {
		return h.settle(ctx, at, stepUnconfigured, fmt.Errorf("provider %s is not configured on this worker", at.payload.Provider()), 0)
	}

	callCtx, cancel := h.callContext(ctx)
	defer cancel()
	if at.last() {
		callCtx = providers.WithLastAttempt(callCtx)
	}
	state, doneAt, err := h.claim(callCtx, at.rec.TaskID, &at.rec, at.last())
	if err != nil {
		return h.settle(ctx, at, stepClaim, err, 0)
	}
	if state == outcome.AlreadySucceeded {
		// Delivered once already (a crash or lease loss came between the
		// provider's answer and asynq's ack): do not email twice.
		at.rec.ProviderMessage = "already resent at " + doneAt.UTC().Format(time.RFC3339) + "; duplicate delivery suppressed"
		at.result = h.encodeResult(Result{Provider: at.rec.Provider, OrderID: at.rec.OrderID, Reference: at.rec.Reference, Attempt: at.rec.Attempt,
			ProviderMessage: at.rec.ProviderMessage, Duplicate: true, CompletedAt: h.now()})
		return h.settle(ctx, at, stepCall, nil, 0)
	}

	callStart := h.now()
	res, err := h.InAttempt.call(callCtx, func() (providers.Result, error) { return r.Resend(callCtx, at.payload.Request()) })
	latency := h.now().Sub(callStart)
	if err == nil {
		at.rec.HTTPStatus, at.rec.ProviderCode, at.rec.ProviderMessage = res.StatusCode, res.Code, redact.Emails(res.Message)
		at.result = h.encodeResult(Result{Provider: at.rec.Provider, OrderID: at.rec.OrderID, Reference: at.rec.Reference, Attempt: at.rec.Attempt,
			HTTPStatus: res.StatusCode, ProviderCode: res.Code, ProviderMessage: at.rec.ProviderMessage, CompletedAt: h.now()})
	}
	return h.settle(ctx, at, stepCall, err, latency)
}

// growStack makes the runtime give the calling goroutine a 32 KiB stack at
// once. asynq runs each task in a new goroutine, which starts with a small
// stack and doubled it three or four times on the way down to the provider
// call, the record and the log line, each time copying a deep stack: 5 % of
// the worker's CPU in the throughput profile (BENCHMARKS.md). One copy at
// the top, with two frames on the stack, is cheap; the stack returns to the
// runtime's cache when the goroutine ends. (CockroachDB's growstack does
// the same for the same reason.)
//
//go:noinline
func growStack() {
	var buf [16 << 10]byte
	keep(buf[:])
}

// keep stops the compiler from dropping growStack's buffer.
//
//go:noinline
func keep([]byte) {}

// attempt is one ProcessTask call: the task, its asynq counters, its
// decoded payload and the record being filled in.
type attempt struct {
	task              *asynq.Task
	start             time.Time
	retried, maxRetry int
	payload           Payload
	decodeErr         error
	rec               outcome.Attempt
	// result is the encoded Result of a completed task, stored with the
	// attempt's record (nil otherwise).
	result []byte
}

// last reports whether asynq archives the task if this attempt fails.
func (at *attempt) last() bool { return at.retried >= at.maxRetry }

// begin reads the task's context and payload into a new attempt record.
func (h *Handler) begin(ctx context.Context, t *asynq.Task) *attempt {
	at := &attempt{task: t, start: h.now()}
	id, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	at.retried, _ = asynq.GetRetryCount(ctx)
	at.maxRetry, _ = asynq.GetMaxRetry(ctx)
	// The payload is parsed once; Meta reads what it can of a broken one,
	// so that even its dead letter names the order.
	var orderID, ref, producer string
	if at.payload, at.decodeErr = Decode(t.Type(), t.Payload()); at.decodeErr == nil {
		orderID, ref, producer = at.payload.Order(), at.payload.Ref(), at.payload.From()
	} else {
		orderID, ref = Meta(t.Payload())
	}
	// Everything stored beside the payload (attempts, result, dead-letter
	// fields) and logged carries the reference masked; the payload keeps it.
	at.rec = outcome.Attempt{
		TaskID: id, Type: t.Type(), Queue: queue, Provider: queue,
		OrderID: orderID, Reference: redact.Emails(ref), Producer: producer, Attempt: at.retried + 1, At: at.start,
	}
	return at
}

// settle decides how the attempt ended, records the decision (with the
// task's dead letter when asynq archives it) and returns asynq's error.
func (h *Handler) settle(ctx context.Context, at *attempt, s step, err error, latency time.Duration) error {
	dec := decide(ending{Step: s, Err: err, Cancelled: errors.Is(ctx.Err(), context.Canceled), Stopping: h.stopping.Load(), Last: at.last()})
	a := &at.rec
	a.Outcome, a.Class, a.Error, a.RetryInMS = dec.Outcome, dec.Class, dec.Error, dec.RetryIn.Milliseconds()
	if s == stepCall && err != nil {
		a.HTTPStatus, a.ProviderCode, a.ProviderMessage = dec.Detail.StatusCode, dec.Detail.Code, redact.Emails(dec.Detail.Message)
	}
	var dead *outcome.DeadLetter
	if dec.DeadLetter != "" {
		dead = &outcome.DeadLetter{
			ID: a.TaskID, Type: a.Type, Queue: a.Queue, Provider: a.Queue, OrderID: a.OrderID, Reference: a.Reference,
			Payload: outcome.Payload(at.task.Payload()), Retried: at.retried, MaxRetry: at.maxRetry,
			LastError: redact.Emails(dec.Error), LastFailedAt: h.now(), Class: dec.DeadLetter, Source: "handler",
		}
	}
	h.finish(ctx, at, dead, latency)
	return dec.Return
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
			// The claim may have been taken before the success mark was
			// read (rdb.ClaimTask): the suppressed attempt's record drops it.
			a.Claim = token
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

func (h *Handler) encodeResult(res Result) []byte {
	b, err := json.Marshal(res)
	if err != nil {
		return nil
	}
	return b
}

// writeResult stores a completed task's result through asynq's
// ResultWriter, for a Recorder that cannot store it with the attempt.
func (h *Handler) writeResult(ctx context.Context, t *asynq.Task, b []byte) {
	if w := t.ResultWriter(); w != nil {
		if _, err := w.Write(b); err != nil {
			h.Logger.WarnContext(ctx, "could not store task result", "error", err.Error())
		}
	}
}

// finish records the attempt, with the task's result when it completed
// (even when the task's context has ended), reports it to the observer and
// logs it.
func (h *Handler) finish(ctx context.Context, at *attempt, dead *outcome.DeadLetter, latency time.Duration) {
	a := &at.rec
	a.DurationMS = float64(h.now().Sub(at.start).Microseconds()) / 1000
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordTimeout)
	defer cancel()
	record := func(rctx context.Context) error {
		if rr, ok := h.Recorder.(resultRecorder); ok && at.result != nil {
			return rr.RecordWithResult(rctx, *a, dead, at.result)
		}
		if at.result != nil {
			h.writeResult(rctx, at.task, at.result)
		}
		return h.Recorder.Record(rctx, *a, dead)
	}
	recErr := record(rctx)
	if recErr != nil && a.Outcome == outcome.Succeeded && !h.stopping.Load() {
		// The provider accepted the request but Redis did not take the
		// success mark (restarting, failing over): without it asynq's
		// redelivery of this task would send the email again. Keep trying
		// while Redis comes back, within SuccessRecordTimeout.
		recErr = h.retrySuccessRecord(ctx, a.TaskID, record, recErr)
	}
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

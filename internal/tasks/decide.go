package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redact"
)

// step is where an attempt ended.
type step int

const (
	// stepCall: the provider call returned; a nil error is a success.
	stepCall step = iota
	// stepDecode: the payload did not decode; no retry can fix it.
	stepDecode
	// stepUnconfigured: this worker has no client for the task's provider.
	stepUnconfigured
	// stepClaim: the success mark or the in-flight claim could not be
	// checked or taken (Redis trouble, another delivery, cancellation).
	stepClaim
	// stepPanic: the handler panicked; Err carries the masked panic value.
	stepPanic
)

// ending is what decide needs to know about an attempt. It carries no Redis
// and no asynq state, so every exit of the handler is table-tested in
// decide_test.go.
type ending struct {
	Step step
	Err  error
	// Cancelled: the task's context was cancelled rather than timed out
	// (asynq's shutdown, a lease loss, the dashboard's cancel).
	Cancelled bool
	// Stopping: the worker is shutting down, so asynq has already put a
	// cancelled task back to pending with its budget untouched.
	Stopping bool
	// Last: no retry is left, so asynq archives the task if this attempt
	// counts as a failure.
	Last bool
}

// decision is what the handler records for an attempt and returns to asynq.
type decision struct {
	Outcome outcome.Outcome
	Class   string
	// Error is the attempt's error as recorded and logged ("" on success).
	Error string
	// Detail is the provider's answer to a failed call (stepCall only).
	Detail providers.Detail
	// RetryIn is the wait asynq is asked for (rate limits, other delivery).
	RetryIn time.Duration
	// DeadLetter, when set, is the class of the dead letter written with the
	// attempt: asynq archives the task on this exit, and no exit that
	// archives waits for the archive sweep.
	DeadLetter string
	// Return is the error handed to asynq: nil completes the task, a
	// *RateLimitError requeues it without spending the budget, a *deadError
	// archives it at once, anything else is a counted failure.
	Return error
}

// decide maps the end of an attempt to its outcome, class and the error
// asynq receives. It is the handler's whole policy; ProcessTask only
// gathers the ending and records the decision.
func decide(e ending) decision {
	switch e.Step {
	case stepDecode:
		err := fmt.Errorf("invalid payload: %s", redact.Emails(e.Err.Error()))
		return decision{Outcome: outcome.Dead, Class: "invalid_payload", Error: err.Error(), DeadLetter: "invalid_payload", Return: &deadError{err}}
	case stepUnconfigured:
		// Only reachable if a task sits in the wrong queue: the worker does
		// not consume queues of unconfigured providers.
		return failed(decision{Class: "configuration", Error: e.Err.Error(), Return: e.Err}, e.Last, "configuration")
	case stepPanic:
		// asynq would turn a panic (say, in a provider client) into a
		// failure too, but without the attempt record that releases the
		// in-flight claim, and without a dead letter on the last attempt.
		return failed(decision{Class: "panic", Error: e.Err.Error(), Return: e.Err}, e.Last, "panic")
	case stepClaim:
		return decideClaim(e)
	}
	if e.Err == nil {
		return decision{Outcome: outcome.Succeeded, Class: providers.Success.String()}
	}
	d := providers.Describe(e.Err)
	msg := redact.Emails(e.Err.Error())
	dec := decision{Class: d.Class.String(), Error: msg, Detail: d, Return: errors.New(msg)}
	switch {
	case e.Cancelled:
		return interrupted(errors.New(msg), e, d)
	case d.Class == providers.Permanent || d.Class == providers.Configuration:
		dec.Outcome, dec.DeadLetter, dec.Return = outcome.Dead, d.Class.String(), &deadError{errors.New(msg)}
	case d.Class == providers.RateLimited && !e.Last:
		dec.Outcome, dec.RetryIn = outcome.RateLimited, d.RetryAfter
		dec.Return = &RateLimitError{RetryIn: d.RetryAfter, WaitsOnReturn: d.WaitsOnReturn, Err: errors.New(msg)}
	case e.Last:
		// asynq archives the task when this attempt fails (for a rate limit
		// too: a task with no budget left cannot bounce).
		dec.Outcome, dec.DeadLetter = outcome.Dead, "retries_exhausted"
	default:
		dec.Outcome = outcome.Retrying
	}
	return dec
}

// decideClaim decides an attempt that ended before the provider call,
// while claiming it.
func decideClaim(e ending) decision {
	var rl *RateLimitError
	switch {
	case e.Cancelled:
		return interrupted(fmt.Errorf("while waiting for another delivery: %w", e.Err), e, providers.Detail{})
	case errors.As(e.Err, &rl):
		// Another delivery of this very task is calling the provider (asynq
		// redelivered it after a lease expiry or timeout): come back when
		// its claim has ended, without spending the budget.
		return decision{Outcome: outcome.Retrying, Class: "in_flight", Error: e.Err.Error(), RetryIn: rl.RetryIn, Return: e.Err}
	case e.Last && errors.Is(e.Err, context.DeadlineExceeded):
		// On the last attempt claim waits for the other delivery; it held
		// the call until this attempt's deadline, and asynq now archives.
		err := errors.New("another delivery of this task held the provider call until this attempt's deadline")
		return decision{Outcome: outcome.Dead, Class: "in_flight", Error: err.Error(), DeadLetter: "in_flight", Return: err}
	case e.Last:
		// Redis trouble with no retry left: asynq archives the task.
		err := errors.New(redact.Emails(e.Err.Error()))
		return decision{Outcome: outcome.Dead, Class: "retries_exhausted", Error: err.Error(), DeadLetter: "retries_exhausted", Return: err}
	default:
		// Redis trouble: asynq retries. The error keeps its chain but not
		// its text: asynq stores that as the task's last error.
		m := maskedError{e.Err}
		return decision{Outcome: outcome.Retrying, Class: providers.Transient.String(), Error: m.Error(), Return: m}
	}
}

// maskedError is err with the addresses in its text masked; errors.Is and
// errors.As still see err.
type maskedError struct{ err error }

func (m maskedError) Error() string { return redact.Emails(m.err.Error()) }
func (m maskedError) Unwrap() error { return m.err }

// interrupted decides an attempt whose context was cancelled. At shutdown
// asynq has already put the task back to pending with its budget untouched
// (and ignores what the handler returns): the attempt is recorded as
// retrying, class "interrupted", which also releases the in-flight claim so
// the requeued task is not blocked. Any other cancellation (lease loss, the
// dashboard's cancel) is a failure to asynq, which archives the task when
// no retry is left: then the dead letter is written with the attempt.
func interrupted(err error, e ending, d providers.Detail) decision {
	err = fmt.Errorf("interrupted: %w", err)
	return failed(decision{Class: "interrupted", Error: err.Error(), Detail: d, Return: err}, e.Last && !e.Stopping, "interrupted")
}

// failed completes a counted failure: dead with a dead letter of class dl
// when asynq archives the task, retrying otherwise.
func failed(dec decision, archived bool, dl string) decision {
	if archived {
		dec.Outcome, dec.DeadLetter = outcome.Dead, dl
	} else {
		dec.Outcome = outcome.Retrying
	}
	return dec
}

package tasks

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
)

// asynqAnswer is what asynq does with the error a handler returns.
type asynqAnswer int

const (
	completes     asynqAnswer = iota // nil: the task is completed
	requeues                         // *RateLimitError: back to the queue, budget untouched
	archivesNow                      // SkipRetry: archived whatever the budget
	countsFailure                    // any other error: retried, or archived when none is left
)

func answerOf(err error) asynqAnswer {
	switch {
	case err == nil:
		return completes
	case !IsFailure(err):
		return requeues
	case errors.Is(err, asynq.SkipRetry):
		return archivesNow
	default:
		return countsFailure
	}
}

// TestDecide covers every exit of ProcessTask without Redis or asynq: for
// each way an attempt ends, the recorded outcome and class, the error text,
// the dead letter (when asynq archives the task) and what asynq is told.
func TestDecide(t *testing.T) {
	t.Parallel()
	otherDelivery := &RateLimitError{RetryIn: 7 * time.Second, Err: errors.New("another delivery of this task is calling the provider; retrying in 7s")}
	redisDown := errors.New("dial tcp 127.0.0.1:6379: connection refused (for ops@example.com)")
	rateLimited := rateLimitedErr("429 too many requests", 5*time.Second)
	tests := []struct {
		desc  string
		in    ending
		want  decision // Return and Detail are checked apart
		ret   asynqAnswer
		retIs error // when set, the very error returned
	}{
		{desc: "Success", in: ending{Step: stepCall},
			want: decision{Outcome: outcome.Succeeded, Class: "success"}, ret: completes},
		{desc: "SuccessOnLastAttempt", in: ending{Step: stepCall, Last: true},
			want: decision{Outcome: outcome.Succeeded, Class: "success"}, ret: completes},

		{desc: "InvalidPayload", in: ending{Step: stepDecode, Err: errors.New("order_id missing for admin@example.com")},
			want: decision{Outcome: outcome.Dead, Class: "invalid_payload", Error: "invalid payload: order_id missing for a***@example.com", DeadLetter: "invalid_payload"},
			ret:  archivesNow},

		{desc: "UnconfiguredProvider", in: ending{Step: stepUnconfigured, Err: errors.New("provider opensrs is not configured on this worker")},
			want: decision{Outcome: outcome.Retrying, Class: "configuration", Error: "provider opensrs is not configured on this worker"},
			ret:  countsFailure},
		{desc: "UnconfiguredProviderLastAttempt", in: ending{Step: stepUnconfigured, Err: errors.New("provider opensrs is not configured on this worker"), Last: true},
			want: decision{Outcome: outcome.Dead, Class: "configuration", Error: "provider opensrs is not configured on this worker", DeadLetter: "configuration"},
			ret:  countsFailure},

		{desc: "Panic", in: ending{Step: stepPanic, Err: errors.New("panic: boom")},
			want: decision{Outcome: outcome.Retrying, Class: "panic", Error: "panic: boom"}, ret: countsFailure},
		{desc: "PanicLastAttempt", in: ending{Step: stepPanic, Err: errors.New("panic: boom"), Last: true},
			want: decision{Outcome: outcome.Dead, Class: "panic", Error: "panic: boom", DeadLetter: "panic"}, ret: countsFailure},

		{desc: "ClaimHeldByAnotherDelivery", in: ending{Step: stepClaim, Err: otherDelivery},
			want: decision{Outcome: outcome.Retrying, Class: "in_flight", Error: otherDelivery.Error(), RetryIn: 7 * time.Second},
			ret:  requeues, retIs: otherDelivery},
		{desc: "ClaimWaitedUntilDeadlineOnLastAttempt", in: ending{Step: stepClaim, Err: context.DeadlineExceeded, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "in_flight", Error: "another delivery of this task held the provider call until this attempt's deadline", DeadLetter: "in_flight"},
			ret:  countsFailure},
		{desc: "ClaimDeadlineNotLastIsTransient", in: ending{Step: stepClaim, Err: context.DeadlineExceeded},
			want: decision{Outcome: outcome.Retrying, Class: "transient", Error: "context deadline exceeded"},
			ret:  countsFailure, retIs: context.DeadlineExceeded},
		{desc: "ClaimRedisTrouble", in: ending{Step: stepClaim, Err: redisDown},
			want: decision{Outcome: outcome.Retrying, Class: "transient", Error: "dial tcp 127.0.0.1:6379: connection refused (for o***@example.com)"},
			ret:  countsFailure, retIs: redisDown},
		{desc: "ClaimRedisTroubleLastAttempt", in: ending{Step: stepClaim, Err: redisDown, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "retries_exhausted", Error: "dial tcp 127.0.0.1:6379: connection refused (for o***@example.com)", DeadLetter: "retries_exhausted"},
			ret:  countsFailure},
		{desc: "ClaimCancelledAtShutdown", in: ending{Step: stepClaim, Err: context.Canceled, Cancelled: true, Stopping: true, Last: true},
			want: decision{Outcome: outcome.Retrying, Class: "interrupted", Error: "interrupted: while waiting for another delivery: context canceled"},
			ret:  countsFailure, retIs: context.Canceled},
		{desc: "ClaimCancelledOtherwise", in: ending{Step: stepClaim, Err: context.Canceled, Cancelled: true},
			want: decision{Outcome: outcome.Retrying, Class: "interrupted", Error: "interrupted: while waiting for another delivery: context canceled"},
			ret:  countsFailure},
		{desc: "ClaimCancelledOtherwiseLastAttempt", in: ending{Step: stepClaim, Err: context.Canceled, Cancelled: true, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "interrupted", Error: "interrupted: while waiting for another delivery: context canceled", DeadLetter: "interrupted"},
			ret:  countsFailure},

		{desc: "Transient", in: ending{Step: stepCall, Err: transientErr("502 bad gateway from ops@example.net")},
			want: decision{Outcome: outcome.Retrying, Class: "transient", Error: "502 bad gateway from o***@example.net"}, ret: countsFailure},
		{desc: "TransientLastAttempt", in: ending{Step: stepCall, Err: transientErr("502 bad gateway"), Last: true},
			want: decision{Outcome: outcome.Dead, Class: "transient", Error: "502 bad gateway", DeadLetter: "retries_exhausted"}, ret: countsFailure},
		{desc: "UnclassifiedErrorIsTransient", in: ending{Step: stepCall, Err: fmt.Errorf("read: connection reset")},
			want: decision{Outcome: outcome.Retrying, Class: "transient", Error: "read: connection reset"}, ret: countsFailure},
		{desc: "RateLimitedWithBudget", in: ending{Step: stepCall, Err: rateLimited},
			want: decision{Outcome: outcome.RateLimited, Class: "rate_limited", Error: "429 too many requests", RetryIn: 5 * time.Second},
			ret:  requeues},
		{desc: "LocalRateLimitCarriesItsInPlaceWait", in: ending{Step: stepCall, Err: &fakeErr{msg: "local rate limit 100/5s reached", d: providers.Detail{Class: providers.RateLimited, Code: "local_rate_limit", RetryAfter: 4 * time.Second, WaitsOnReturn: 3 * time.Second, NotSent: true}}},
			want: decision{Outcome: outcome.RateLimited, Class: "rate_limited", Error: "local rate limit 100/5s reached", RetryIn: 4 * time.Second},
			ret:  requeues},
		{desc: "RateLimitedWithoutHint", in: ending{Step: stepCall, Err: rateLimitedErr("429", 0)},
			want: decision{Outcome: outcome.RateLimited, Class: "rate_limited", Error: "429"}, ret: requeues},
		{desc: "RateLimitedWithoutBudget", in: ending{Step: stepCall, Err: rateLimited, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "rate_limited", Error: "429 too many requests", DeadLetter: "retries_exhausted"},
			ret:  countsFailure},
		{desc: "Permanent", in: ending{Step: stepCall, Err: permanentErr("approver admin@example.com is not valid")},
			want: decision{Outcome: outcome.Dead, Class: "permanent", Error: "approver a***@example.com is not valid", DeadLetter: "permanent"},
			ret:  archivesNow},
		{desc: "Configuration", in: ending{Step: stepCall, Err: &fakeErr{msg: "IP not allow-listed", d: providers.Detail{Class: providers.Configuration, StatusCode: 403}}},
			want: decision{Outcome: outcome.Dead, Class: "configuration", Error: "IP not allow-listed", DeadLetter: "configuration"},
			ret:  archivesNow},
		{desc: "CallCancelledAtShutdown", in: ending{Step: stepCall, Err: transientErr("context canceled"), Cancelled: true, Stopping: true, Last: true},
			want: decision{Outcome: outcome.Retrying, Class: "interrupted", Error: "interrupted: context canceled"}, ret: countsFailure},
		{desc: "CallCancelledOtherwise", in: ending{Step: stepCall, Err: transientErr("context canceled"), Cancelled: true},
			want: decision{Outcome: outcome.Retrying, Class: "interrupted", Error: "interrupted: context canceled"}, ret: countsFailure},
		{desc: "CallCancelledOtherwiseLastAttempt", in: ending{Step: stepCall, Err: transientErr("context canceled"), Cancelled: true, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "interrupted", Error: "interrupted: context canceled", DeadLetter: "interrupted"}, ret: countsFailure},
		{desc: "StoppingWithoutCancellationIsAnOrdinaryFailure", in: ending{Step: stepCall, Err: transientErr("502 bad gateway"), Stopping: true, Last: true},
			want: decision{Outcome: outcome.Dead, Class: "transient", Error: "502 bad gateway", DeadLetter: "retries_exhausted"}, ret: countsFailure},
		{desc: "CancelledPermanentIsStillInterrupted", in: ending{Step: stepCall, Err: permanentErr("order not found"), Cancelled: true},
			want: decision{Outcome: outcome.Retrying, Class: "interrupted", Error: "interrupted: order not found"}, ret: countsFailure},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			got := decide(tc.in)
			require.Equal(t, tc.ret, answerOf(got.Return), "asynq's answer to %v", got.Return)
			switch {
			case tc.retIs != nil:
				// The error keeps its chain, and asynq stores the recorded
				// (masked) text as LastErr.
				require.ErrorIs(t, got.Return, tc.retIs)
				require.Equal(t, got.Error, got.Return.Error(), "asynq stores the recorded text as LastErr")
			case tc.ret != completes:
				require.Equal(t, got.Error, got.Return.Error(), "asynq stores the recorded text as LastErr")
			}
			var rl *RateLimitError
			if errors.As(got.Return, &rl) {
				require.Equal(t, tc.want.RetryIn, rl.RetryIn, "the wait asynq schedules")
				require.Equal(t, providers.Describe(tc.in.Err).WaitsOnReturn, rl.WaitsOnReturn, "how early it may come back")
			}
			if tc.in.Step == stepCall && tc.in.Err != nil {
				require.Equal(t, providers.Describe(tc.in.Err), got.Detail, "the provider's answer is recorded")
			}
			got.Return, got.Detail = nil, providers.Detail{}
			require.Equal(t, tc.want, got)
		})
	}
}

package main

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/tasks"
)

// TestLimiterRequeueMeetsItsSlot pins the relation between three settings
// of the worker: a task the rate limiter sends back is scheduled half of the
// limiter's in-place wait before its slot (tasks.RetryPolicy.RetryDelay),
// and asynq moves it to pending anywhere from 1 s before that (whole-second
// scores) to delayedTaskCheck after it, then picks it up within taskCheck.
// It must reach the worker no later than its slot (a late one delays every
// later window of a backlog) and no earlier than the in-place wait covers
// (it would be refused and sent back again).
func TestLimiterRequeueMeetsItsSlot(t *testing.T) {
	t.Parallel()
	maxWait := tasks.DefaultInAttempt.MaxRateLimitWait
	for _, wait := range []time.Duration{maxWait + time.Millisecond, 3100 * time.Millisecond, 5 * time.Second, 10*time.Second + 100*time.Millisecond, 3 * time.Minute} {
		t.Run(wait.String(), func(t *testing.T) {
			d := tasks.DefaultRetryPolicy.RetryDelay(0, &tasks.RateLimitError{RetryIn: wait, WaitsOnReturn: maxWait, Err: errors.New("local")}, nil)
			earliest, latest := d-time.Second, d+delayedTaskCheck+taskCheck
			require.LessOrEqual(t, latest, wait, "back after its slot")
			require.GreaterOrEqual(t, earliest, wait-maxWait, "back before the limiter would wait for its slot")
		})
	}
}

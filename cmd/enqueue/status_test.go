package main

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks/taskstest"
	"github.com/certmail/certmail/internal/taskstatus"
)

// fakeResender is a providers.Resender answering with its func field.
type fakeResender struct {
	resend func(ctx context.Context, req providers.Request) (providers.Result, error)
	calls  atomic.Int64
}

func (f *fakeResender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	f.calls.Add(1)
	return f.resend(ctx, req)
}

// failingOrder is the order ID the fake resender fails for.
const failingOrder = "5000"

// startWorker runs the real tasks.Handler with a fake resender in an asynq
// server (the task kit); failed tasks stay in the retry state for the whole
// test.
func startWorker(t *testing.T, e *testEnv) *fakeResender {
	t.Helper()
	fake := &fakeResender{resend: func(_ context.Context, req providers.Request) (providers.Result, error) {
		if req.OrderID == failingOrder {
			return providers.Result{}, errors.New("provider said: try later")
		}
		return providers.Result{StatusCode: 200, Code: "200", Message: "Email sent"}, nil
	}}
	taskstest.Start(t, e.rdb, taskstest.Config{Resender: fake, Retention: time.Hour, RetryDelay: time.Hour,
		ProviderTimeout: 5 * time.Second})
	return fake
}

func (e *testEnv) waitState(t *testing.T, queue, id string, state asynq.TaskState) {
	t.Helper()
	require.Eventually(t, func() bool {
		info, err := e.insp.GetTaskInfo(queue, id)
		return err == nil && info.State == state
	}, 20*time.Second, 50*time.Millisecond, "task %s never reached %s", id, state)
}

// statusJSONOf runs status --json and decodes the object both generically
// (to check the key names) and into taskstatus.Status.
func statusJSONOf(t *testing.T, e *testEnv, id string) (map[string]any, taskstatus.Status) {
	t.Helper()
	r := e.run(t, "status", id, "--json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	require.Empty(t, r.stderr)
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &m), r.stdout)
	for _, k := range []string{"id", "type", "queue", "state", "retried", "max_retry", "last_error", "payload", "attempts"} {
		require.Contains(t, m, k)
	}
	require.IsType(t, map[string]any{}, m["payload"], "payload is an object")
	require.IsType(t, []any{}, m["attempts"], "attempts is an array, never null")
	var s taskstatus.Status
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &s))
	return m, s
}

func TestStatusPendingAndArchived(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		id := requireID(t, e.run(t, "digicert", "--order-id", "12345", "--approval-email", "example.com=admin@example.com",
			"--locale", "en", "--reference", "R-9", "--max-retry", "4"))

		m, s := statusJSONOf(t, e, id)
		require.Equal(t, id, m["id"])
		require.Equal(t, "digicert:resend_emails", m["type"])
		require.Equal(t, "digicert", m["queue"])
		require.Equal(t, "pending", m["state"])
		require.EqualValues(t, 0, m["retried"])
		require.EqualValues(t, 4, m["max_retry"])
		require.Equal(t, "", m["last_error"])
		require.Equal(t, map[string]any{"order_id": "12345", "locale": "en", "reference": "R-9",
			"domain_approval_emails": []any{map[string]any{"domain": "example.com", "email": "a***@example.com"}}}, m["payload"]) // masked on output
		require.Empty(t, m["attempts"])
		require.NotContains(t, m, "result")
		require.False(t, s.Dead)

		// Human-readable form.
		r := e.run(t, "status", id)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "id:         "+id+"\n")
		require.Contains(t, r.stdout, "state:      pending\n")
		require.Contains(t, r.stdout, "retried:    0/4\n")
		require.Contains(t, r.stdout, "attempts:   0\n")

		// --json before the ID works too.
		r = e.run(t, "status", "--json", id)
		require.Equal(t, exitOK, r.code, r.stderr)

		require.NoError(t, e.insp.ArchiveTask("digicert", id))
		m, _ = statusJSONOf(t, e, id)
		require.Equal(t, "archived", m["state"])
		require.Equal(t, id, m["id"])

		// Scheduled.
		id2 := requireID(t, e.run(t, "opensrs", "--order-id", "1799", "--delay", "1h"))
		m, s = statusJSONOf(t, e, id2)
		require.Equal(t, "scheduled", m["state"])
		require.Equal(t, "opensrs", m["queue"])
		require.NotNil(t, s.NextProcessAt)
		require.WithinDuration(t, time.Now().Add(time.Hour), *s.NextProcessAt, 3*time.Second)
	})
}

func TestStatusUnknownID(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		const unknown = "0b1f4c8e-1111-2222-3333-444455556666"
		// With no queue at all, and with both queues in use.
		requireOneLineFailure(t, e.run(t, "status", unknown, "--json"), unknown)
		requireID(t, e.run(t, "opensrs", "--order-id", "1"))
		requireID(t, e.run(t, "digicert", "--order-id", "1"))
		r := e.run(t, "status", unknown)
		requireOneLineFailure(t, r, "not found")
		require.Contains(t, r.stderr, unknown)
	})
}

func TestStatusProcessed(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		fake := startWorker(t, e)

		id := requireID(t, e.run(t, "opensrs", "--order-id", "4242", "--reference", "T-1"))
		e.waitState(t, "opensrs", id, asynq.TaskStateCompleted)
		m, s := statusJSONOf(t, e, id)
		require.Equal(t, "completed", m["state"])
		require.Equal(t, "opensrs:resend_cert_email", m["type"])
		require.Equal(t, map[string]any{"order_id": "4242", "reference": "T-1"}, m["payload"])
		res, ok := m["result"].(map[string]any)
		require.True(t, ok, "result is an object once completed: %v", m["result"])
		require.Equal(t, "4242", res["order_id"])
		require.Equal(t, "opensrs", res["provider"])
		require.Equal(t, "T-1", res["reference"])
		require.Len(t, s.Attempts, 1)
		require.Equal(t, outcome.Succeeded, s.Attempts[0].Outcome)
		require.Equal(t, 1, s.Attempts[0].Attempt)
		require.Equal(t, id, s.Attempts[0].TaskID)
		require.NotNil(t, s.CompletedAt)

		r := e.run(t, "status", id)
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "state:      completed\n")
		require.Contains(t, r.stdout, "attempts:   1\n")
		require.Contains(t, r.stdout, "succeeded")

		// A failure left in the retry state.
		id2 := requireID(t, e.run(t, "digicert", "--order-id", failingOrder, "--max-retry", "3"))
		e.waitState(t, "digicert", id2, asynq.TaskStateRetry)
		require.Eventually(t, func() bool {
			_, s := statusJSONOf(t, e, id2)
			return len(s.Attempts) == 1
		}, 5*time.Second, 50*time.Millisecond)
		m, s = statusJSONOf(t, e, id2)
		require.Equal(t, "retry", m["state"])
		require.EqualValues(t, 1, m["retried"])
		require.EqualValues(t, 3, m["max_retry"])
		require.Contains(t, m["last_error"], "try later")
		require.NotContains(t, m, "result")
		require.Equal(t, outcome.Retrying, s.Attempts[0].Outcome)
		require.Contains(t, s.Attempts[0].Error, "try later")

		// Dedup: inside the window a completed task is still the answer;
		// after it a new task is created (and processed).
		window, expire := dedupArgs(b)
		id3 := requireID(t, e.run(t, append([]string{"opensrs", "--order-id", "77"}, window...)...))
		e.waitState(t, "opensrs", id3, asynq.TaskStateCompleted)
		if !b.Real() { // on the real server the 1s window may be over by now
			dup := e.run(t, append([]string{"opensrs", "--order-id", "77"}, window...)...)
			require.Equal(t, id3, requireID(t, dup))
			require.Equal(t, "duplicate of "+id3+"\n", dup.stderr)
		}
		expire()
		again := e.run(t, append([]string{"opensrs", "--order-id", "77"}, window...)...)
		id4 := requireID(t, again)
		require.NotEqual(t, id3, id4)
		require.Empty(t, again.stderr)
		e.waitState(t, "opensrs", id4, asynq.TaskStateCompleted)
		require.EqualValues(t, 4, fake.calls.Load()) // 4242, 5000, 77 twice
	})
}

package taskstatus_test

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter/deadlettertest"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/taskstatus"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// TestGet follows tasks through the three sources Get merges: asynq alone
// (pending), asynq plus attempts (completed), asynq plus a dead letter
// (archived), the dead letter alone once asynq dropped the task, and none.
func TestGet(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		client := asynq.NewClientFromRedisClient(rdb)
		t.Cleanup(func() { _ = client.Close() })
		insp := asynq.NewInspectorFromRedisClient(rdb)
		t.Cleanup(func() { _ = insp.Close() })
		enqueue := func(order string) string {
			info, err := client.Enqueue(asynq.NewTask(tasks.TypeOpenSRSResendCertEmail, []byte(`{"order_id":"`+order+`"}`)),
				asynq.Queue(tasks.QueueOpenSRS), asynq.MaxRetry(0), asynq.Retention(time.Hour))
			require.NoError(t, err)
			return info.ID
		}

		const unknown = "0b1f4c8e-1111-2222-3333-444455556666"
		_, err := taskstatus.Get(t.Context(), rdb, unknown)
		require.ErrorIs(t, err, taskstatus.ErrNotFound)
		require.ErrorContains(t, err, "task "+unknown+" not found in queues")

		pending := enqueue("1")
		s, err := taskstatus.Get(t.Context(), rdb, pending)
		require.NoError(t, err)
		require.Equal(t, "pending", s.State)
		require.Equal(t, tasks.TypeOpenSRSResendCertEmail, s.Type)
		require.Equal(t, tasks.QueueOpenSRS, s.Queue)
		require.JSONEq(t, `{"order_id":"1"}`, string(s.Payload))
		require.NotNil(t, s.Attempts, "an empty array, never null")
		require.Empty(t, s.Attempts)
		require.False(t, s.Dead)

		dead := enqueue("404")
		deadlettertest.Drain(t, rdb, deadlettertest.Resender{Errs: map[string]error{
			"404": deadlettertest.Permanent(404, "order 404 not found"),
		}}, 2)

		s, err = taskstatus.Get(t.Context(), rdb, pending)
		require.NoError(t, err)
		require.Equal(t, "completed", s.State)
		require.NotNil(t, s.CompletedAt)
		require.Len(t, s.Attempts, 1)
		require.Equal(t, outcome.Succeeded, s.Attempts[0].Outcome)
		require.False(t, s.Dead)

		s, err = taskstatus.Get(t.Context(), rdb, dead)
		require.NoError(t, err)
		require.Equal(t, "archived", s.State)
		require.True(t, s.Dead)
		require.Contains(t, s.LastError, "order 404 not found")
		require.NotEmpty(t, s.Timeout, "asynq's view, not the record's")

		// asynq trims its archive; the dead-letter record stands in.
		require.NoError(t, insp.DeleteTask(tasks.QueueOpenSRS, dead))
		s, err = taskstatus.Get(t.Context(), rdb, dead)
		require.NoError(t, err)
		require.Equal(t, "archived", s.State)
		require.True(t, s.Dead)
		require.Equal(t, dead, s.ID)
		require.Equal(t, tasks.QueueOpenSRS, s.Queue)
		require.Contains(t, s.LastError, "order 404 not found")
		require.NotNil(t, s.LastFailedAt)
		require.Empty(t, s.Timeout, "no asynq view left")
		require.JSONEq(t, `{"order_id":"404"}`, string(s.Payload))
		require.Len(t, s.Attempts, 1)
		require.Equal(t, outcome.Dead, s.Attempts[0].Outcome)
	})
}

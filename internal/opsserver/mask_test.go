package opsserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// The escaped-address payloads of issue 7: what another producer's JSON
// encoder may write, and what asynqmon used to show verbatim.
const (
	// escapedPayload holds "jörg.müller@example.com" with its at sign and
	// umlauts as JSON escapes, and a percent-encoded reference.
	escapedPayload = `{"order_id":"404","domain_approval_emails":[{"domain":"example.com","email":"j\u00f6rg.m\u00fcller\u0040example.com"}],"reference":"admin%40example.com"}`
	escapedResult  = `{"provider":"digicert","order_id":"200","provider_message":"sent to j\u00f6rg.m\u00fcller\u0040example.com"}`
	// escapedErr is a last error with a Unicode address, as a handler
	// that forgot to mask would leave it.
	escapedErr = "digicert: 400 invalid_email: jörg.müller@example.com (permanent)"
)

// leaks are the fragments of the addresses above that must never be shown.
var leaks = []string{"rg.m", "ller", `\u00f6rg`, `m\u00fcller`, "dmin%40"}

// unmaskedDeath is a dead task's error as a handler that forgot to mask
// would return it (the real one masks, so seed uses it and this cannot):
// asynq archives the task (SkipRetry) and keeps the text as LastErr.
type unmaskedDeath struct{ msg string }

func (e *unmaskedDeath) Error() string   { return e.msg }
func (e *unmaskedDeath) Unwrap() []error { return []error{asynq.SkipRetry} }

// seedEscaped archives one digicert task with escapedPayload and
// escapedErr, and completes another with escapedResult.
func seedEscaped(t *testing.T, rdb redis.UniversalClient) (dead, done string) {
	t.Helper()
	client := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	enqueue := func(payload string, opts ...asynq.Option) string {
		info, err := client.Enqueue(asynq.NewTask(tasks.TypeDigiCertResendEmails, []byte(payload)),
			append(opts, asynq.Queue(tasks.QueueDigiCert), asynq.MaxRetry(3))...)
		require.NoError(t, err)
		return info.ID
	}
	dead = enqueue(escapedPayload)
	done = enqueue(`{"order_id":"200","domain_approval_emails":[{"domain":"example.com","email":"j\u00f6rg.m\u00fcller\u0040example.com"}]}`, asynq.Retention(time.Hour))

	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              2,
		Queues:                   map[string]int{tasks.QueueDigiCert: 1},
		TaskCheckInterval:        100 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		ShutdownTimeout:          2 * time.Second,
		LogLevel:                 asynq.FatalLevel,
	})
	require.NoError(t, srv.Start(asynq.HandlerFunc(func(_ context.Context, task *asynq.Task) error {
		var p struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(task.Payload(), &p)
		if p.OrderID == "404" {
			return &unmaskedDeath{escapedErr}
		}
		_, err := task.ResultWriter().Write([]byte(escapedResult))
		return err
	})))
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			srv.Shutdown()
		}
	}
	t.Cleanup(stop)
	require.Eventually(t, func() bool {
		d, err1 := insp.GetTaskInfo(tasks.QueueDigiCert, dead)
		c, err2 := insp.GetTaskInfo(tasks.QueueDigiCert, done)
		return err1 == nil && err2 == nil && d.State == asynq.TaskStateArchived && c.State == asynq.TaskStateCompleted
	}, 15*time.Second, 50*time.Millisecond, "seeded tasks did not reach their states")
	stop()
	// Redis keeps them verbatim: replay needs the real address.
	info, err := insp.GetTaskInfo(tasks.QueueDigiCert, dead)
	require.NoError(t, err)
	require.Equal(t, escapedPayload, string(info.Payload))
	return dead, done
}

// TestDashboardAPIMasksEscapedEmails reads the JSON API the dashboard's
// pages read: no payload, result or last error may show an address, however
// it is spelled in Redis.
func TestDashboardAPIMasksEscapedEmails(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		dead, done := seedEscaped(t, rdb)
		h := newServer(t, b.URL, rdb, opsserver.DashboardConfig{User: testUser, Password: testPassword, ReadOnly: true})

		tests := []struct {
			name   string
			path   string
			fields map[string]string // JSON field of the (first) task → masked text it must contain
		}{
			{"Archived", "/dashboard/api/queues/digicert/archived_tasks", map[string]string{
				"payload": `"email":"j***@example.com"`, "error_message": "invalid_email: j***@example.com"}},
			{"ArchivedTask", "/dashboard/api/queues/digicert/tasks/" + dead, map[string]string{
				"payload": `"reference":"a***%40example.com"`, "error_message": "invalid_email: j***@example.com"}},
			{"Completed", "/dashboard/api/queues/digicert/completed_tasks", map[string]string{
				"payload": `"email":"j***@example.com"`, "result": "sent to j***@example.com"}},
			{"CompletedTask", "/dashboard/api/queues/digicert/tasks/" + done, map[string]string{
				"result": "sent to j***@example.com"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				rec := do(t, h, request{path: tc.path, user: testUser, pass: testPassword})
				require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
				body := rec.Body.String()
				for _, l := range leaks {
					require.NotContains(t, body, l)
				}
				var task map[string]any
				var list struct {
					Tasks []map[string]any `json:"tasks"`
				}
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list), body)
				if len(list.Tasks) > 0 {
					require.Len(t, list.Tasks, 1)
					task = list.Tasks[0]
				} else {
					require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &task))
				}
				for f, want := range tc.fields {
					require.Contains(t, task[f], want, "field %s", f)
				}
			})
		}
	})
}

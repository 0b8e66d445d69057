package opsserver_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/tasks/taskstest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const (
	// approver is the address in the digicert payloads and result; the
	// dashboard must show it only as approverMasked.
	approver       = "admin@example.com"
	approverMasked = "a***@example.com"
	// The provider errors the seeded tasks die with (asynq's LastErr).
	digicertErr = "digicert: 404 not_found|order: Order not found (permanent)"
	opensrsErr  = "opensrs: 415 Authentication failed (permanent)"

	testUser     = "ops"
	testPassword = "s3cret-Pa55word"
)

// seeded names the tasks seed leaves in Redis.
type seeded struct {
	DigiCertDead string // archived, LastErr digicertErr
	DigiCertDone string // completed, result mentioning approver
	OpenSRSDead  string // archived, LastErr opensrsErr
}

// seed runs the real worker handler (the task kit) over rdb with a fake
// provider that kills one digicert and one opensrs task and completes another
// digicert task (kept with its result, which names approver), then stops it
// so that the tasks stay where they are.
func seed(t *testing.T, rdb redis.UniversalClient) seeded {
	t.Helper()
	client := asynq.NewClientFromRedisClient(rdb)
	t.Cleanup(func() { _ = client.Close() })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = insp.Close() })

	digicertPayload := func(order string) []byte {
		return []byte(fmt.Sprintf(`{"order_id":%q,"domain_approval_emails":[{"domain":"example.com","email":%q}],"locale":"en","reference":"ticket-1"}`, order, approver))
	}
	enqueue := func(typ string, payload []byte, queue string, opts ...asynq.Option) string {
		info, err := client.Enqueue(asynq.NewTask(typ, payload), append(opts, asynq.Queue(queue), asynq.MaxRetry(3))...)
		require.NoError(t, err)
		return info.ID
	}
	s := seeded{
		DigiCertDead: enqueue(tasks.TypeDigiCertResendEmails, digicertPayload("404"), tasks.QueueDigiCert),
		DigiCertDone: enqueue(tasks.TypeDigiCertResendEmails, digicertPayload("200"), tasks.QueueDigiCert, asynq.Retention(time.Hour)),
		OpenSRSDead:  enqueue(tasks.TypeOpenSRSResendCertEmail, []byte(`{"order_id":"7"}`), tasks.QueueOpenSRS),
	}

	fake := taskstest.ResendFunc(func(_ context.Context, req providers.Request) (providers.Result, error) {
		switch req.OrderID {
		case "7":
			return providers.Result{}, taskstest.Permanent(415, opensrsErr)
		case "404":
			return providers.Result{}, taskstest.Permanent(404, digicertErr)
		default:
			return providers.Result{StatusCode: 200, Message: "emails sent to " + approver}, nil
		}
	})
	taskstest.Drain(t, rdb, fake, 2)

	want := map[string]asynq.TaskState{
		s.DigiCertDead: asynq.TaskStateArchived,
		s.DigiCertDone: asynq.TaskStateCompleted,
		s.OpenSRSDead:  asynq.TaskStateArchived,
	}
	queueOf := map[string]string{s.DigiCertDead: tasks.QueueDigiCert, s.DigiCertDone: tasks.QueueDigiCert, s.OpenSRSDead: tasks.QueueOpenSRS}
	for id, st := range want {
		info, err := insp.GetTaskInfo(queueOf[id], id)
		require.NoError(t, err)
		require.Equal(t, st, info.State, "task %s", id)
	}
	info, err := insp.GetTaskInfo(tasks.QueueDigiCert, s.DigiCertDead)
	require.NoError(t, err)
	require.Equal(t, digicertErr, info.LastErr)
	return s
}

// newServer builds an opsserver over the backend, closed with the test.
func newServer(t *testing.T, redisURL string, rdb redis.UniversalClient, dash opsserver.DashboardConfig) http.Handler {
	t.Helper()
	s, err := opsserver.New(opsserver.Config{
		RedisURL:  redisURL,
		Redis:     rdb,
		Running:   func() bool { return true },
		Dashboard: dash,
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s.Handler()
}

type request struct {
	method, path string
	user, pass   string // basic auth when user != ""
}

func do(t *testing.T, h http.Handler, r request) *httptest.ResponseRecorder {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	req := httptest.NewRequestWithContext(t.Context(), r.method, r.path, nil)
	if r.user != "" {
		req.SetBasicAuth(r.user, r.pass)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// newLogger returns a logger and a func reading what it wrote.
func newLogger() (*slog.Logger, func() string) {
	var b bytes.Buffer
	var mu = make(chan struct{}, 1)
	w := writerFunc(func(p []byte) (int, error) {
		mu <- struct{}{}
		defer func() { <-mu }()
		return b.Write(p)
	})
	return slog.New(slog.NewTextHandler(w, nil)), func() string {
		mu <- struct{}{}
		defer func() { <-mu }()
		return b.String()
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

var _ io.Writer = writerFunc(nil)

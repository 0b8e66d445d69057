package opsserver_test

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
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

// permanentError is how the worker's handler kills a task: asynq archives it
// (SkipRetry) and stores the provider's words as LastErr.
type permanentError struct{ msg string }

func (e *permanentError) Error() string   { return e.msg }
func (e *permanentError) Unwrap() []error { return []error{asynq.SkipRetry} }

// seed runs a short-lived asynq server over rdb that kills one digicert and
// one opensrs task and completes another digicert task (kept with its
// result), then stops it so that the tasks stay where they are.
func seed(t *testing.T, rdb redis.UniversalClient) seeded {
	t.Helper()
	client := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)

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

	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              2,
		Queues:                   map[string]int{tasks.QueueDigiCert: 1, tasks.QueueOpenSRS: 1},
		TaskCheckInterval:        100 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		ShutdownTimeout:          2 * time.Second,
		LogLevel:                 asynq.FatalLevel,
	})
	h := asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		var p struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(task.Payload(), &p)
		switch {
		case task.Type() == tasks.TypeOpenSRSResendCertEmail:
			return &permanentError{opensrsErr}
		case p.OrderID == "404":
			return &permanentError{digicertErr}
		default:
			_, err := task.ResultWriter().Write([]byte(`{"provider":"digicert","order_id":"200","approver":"` + approver + `"}`))
			return err
		}
	})
	require.NoError(t, srv.Start(h))
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			srv.Shutdown()
		}
	}
	t.Cleanup(stop)

	want := map[string]asynq.TaskState{
		s.DigiCertDead: asynq.TaskStateArchived,
		s.DigiCertDone: asynq.TaskStateCompleted,
		s.OpenSRSDead:  asynq.TaskStateArchived,
	}
	queueOf := map[string]string{s.DigiCertDead: tasks.QueueDigiCert, s.DigiCertDone: tasks.QueueDigiCert, s.OpenSRSDead: tasks.QueueOpenSRS}
	require.Eventually(t, func() bool {
		for id, st := range want {
			info, err := insp.GetTaskInfo(queueOf[id], id)
			if err != nil || info.State != st {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "seeded tasks did not reach their states")
	stop()

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

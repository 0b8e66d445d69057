package opsserver_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

func TestHealthz(t *testing.T) {
	t.Parallel()
	// A Redis that never answers: liveness must not depend on it.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	s, err := opsserver.New(opsserver.Config{Redis: rdb, Running: func() bool { return false }})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	rec := do(t, s.Handler(), request{path: "/healthz"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "ok\n", rec.Body.String())

	rec = do(t, s.Handler(), request{path: "/metrics"})
	require.Equal(t, http.StatusNotFound, rec.Code, "no Metrics handler: /metrics is not routed")
}

func TestMetricsRoute(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	s, err := opsserver.New(opsserver.Config{
		Redis: rdb, Running: func() bool { return true },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("m 1\n")) }),
	})
	require.NoError(t, err)
	rec := do(t, s.Handler(), request{path: "/metrics"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "m 1\n", rec.Body.String())
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		// stop and start Redis under the client: miniredis closes and
		// restarts on its address; for real Redis the test takes a server
		// it may stop (redistest.Restartable), since the shared one must
		// stay up.
		var addr string
		var stop, start func()
		if b.Mini != nil {
			addr, stop, start = b.Mini.Addr(), b.Mini.Close, func() { require.NoError(t, b.Mini.Restart()) }
		} else {
			s := redistest.Restartable(t)
			addr, stop, start = s.Addr(), s.Stop, s.Start
		}
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = rdb.Close() })
		var running atomic.Bool
		running.Store(true)
		s, err := opsserver.New(opsserver.Config{Redis: rdb, Running: running.Load})
		require.NoError(t, err)
		h := s.Handler()

		// Steps run in order: each changes the world, then checks /readyz.
		steps := []struct {
			name     string
			change   func()
			wantCode int
			wantBody string
		}{
			{"Ready", nil, http.StatusOK, "ready"},
			{"AsynqStopped", func() { running.Store(false) }, http.StatusServiceUnavailable, "asynq server is not running"},
			{"AsynqRunningAgain", func() { running.Store(true) }, http.StatusOK, "ready"},
			{"RedisStopped", stop, http.StatusServiceUnavailable, "redis: no answer to PING"},
			{"RedisBack", start, http.StatusOK, "ready"},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				if st.change != nil {
					st.change()
				}
				require.Eventually(t, func() bool {
					began := time.Now()
					rec := do(t, h, request{path: "/readyz"})
					require.Less(t, time.Since(began), 2*time.Second, "/readyz must answer within its timeout")
					return rec.Code == st.wantCode && strings.Contains(rec.Body.String(), st.wantBody)
				}, 10*time.Second, 50*time.Millisecond, "want %d %q", st.wantCode, st.wantBody)
				require.Equal(t, http.StatusOK, do(t, h, request{path: "/healthz"}).Code, "liveness is independent")
			})
		}
	})
}

func TestNew(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	running := func() bool { return true }
	url := "redis://:" + testPassword + "@127.0.0.1:1/0"

	tests := []struct {
		name    string
		cfg     opsserver.Config
		wantErr string
	}{
		{"NoRedis", opsserver.Config{Running: running}, "Redis is required"},
		{"NoRunning", opsserver.Config{Redis: rdb}, "Running is required"},
		{"UserWithoutPassword", opsserver.Config{Redis: rdb, Running: running, RedisURL: url,
			Dashboard: opsserver.DashboardConfig{User: testUser}}, "both a user and a password"},
		{"PasswordWithoutUser", opsserver.Config{Redis: rdb, Running: running, RedisURL: url,
			Dashboard: opsserver.DashboardConfig{Password: testPassword}}, "both a user and a password"},
		{"NoAuthWithCredentials", opsserver.Config{Redis: rdb, Running: running, RedisURL: url,
			Dashboard: opsserver.DashboardConfig{User: testUser, Password: testPassword, NoAuth: true}}, "choose one"},
		{"UserWithColon", opsserver.Config{Redis: rdb, Running: running, RedisURL: url,
			Dashboard: opsserver.DashboardConfig{User: "a:b", Password: testPassword}}, "':'"},
		{"DashboardWithoutURL", opsserver.Config{Redis: rdb, Running: running,
			Dashboard: opsserver.DashboardConfig{NoAuth: true}}, "no Redis URL"},
		{"BadURL", opsserver.Config{Redis: rdb, Running: running, RedisURL: "http://u:" + testPassword + "@host/x",
			Dashboard: opsserver.DashboardConfig{NoAuth: true}}, "invalid Redis URL"},
		{"Off", opsserver.Config{Redis: rdb, Running: running}, ""},
		{"On", opsserver.Config{Redis: rdb, Running: running, RedisURL: url,
			Dashboard: opsserver.DashboardConfig{User: testUser, Password: testPassword, ReadOnly: true}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := opsserver.New(tc.cfg)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), testPassword)
				return
			}
			require.NoError(t, err)
			require.NoError(t, s.Close())
		})
	}
}

func TestStartupLog(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	url := "redis://:" + testPassword + "@127.0.0.1:1/0"

	tests := []struct {
		name     string
		dash     opsserver.DashboardConfig
		wantLine string
	}{
		{"Off", opsserver.DashboardConfig{}, `level=INFO msg="ops http configured" dashboard=off`},
		{"BasicAuth", opsserver.DashboardConfig{User: testUser, Password: testPassword},
			`level=INFO msg="ops http configured" dashboard="on, basic auth" path=/dashboard/ user=ops`},
		{"ReadOnly", opsserver.DashboardConfig{User: testUser, Password: testPassword, ReadOnly: true},
			`dashboard="on, read-only, basic auth"`},
		{"NoAuth", opsserver.DashboardConfig{NoAuth: true}, `level=WARN msg="ops http configured" dashboard="on, no authentication"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logger, logs := newLogger()
			s, err := opsserver.New(opsserver.Config{RedisURL: url, Redis: rdb, Running: func() bool { return true },
				Dashboard: tc.dash, Logger: logger})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			require.Contains(t, logs(), tc.wantLine)
			require.NotContains(t, logs(), testPassword)
		})
	}
}

func TestDashboardAuth(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		seed(t, rdb)
		creds := opsserver.DashboardConfig{User: testUser, Password: testPassword}

		tests := []struct {
			name     string
			dash     opsserver.DashboardConfig
			req      request
			wantCode int
			wantBody string
		}{
			{"OffRoot", opsserver.DashboardConfig{}, request{path: "/dashboard/"}, http.StatusNotFound, "set DASHBOARD_USER and DASHBOARD_PASSWORD"},
			{"OffAPI", opsserver.DashboardConfig{}, request{path: "/dashboard/api/queues", user: testUser, pass: testPassword}, http.StatusNotFound, "dashboard is disabled"},
			{"NoAuthHeader", creds, request{path: "/dashboard/"}, http.StatusUnauthorized, "unauthorized"},
			{"NoAuthHeaderAPI", creds, request{path: "/dashboard/api/queues"}, http.StatusUnauthorized, "unauthorized"},
			{"WrongPassword", creds, request{path: "/dashboard/", user: testUser, pass: testPassword + "x"}, http.StatusUnauthorized, "unauthorized"},
			{"WrongUser", creds, request{path: "/dashboard/api/queues", user: "root", pass: testPassword}, http.StatusUnauthorized, "unauthorized"},
			{"RightRoot", creds, request{path: "/dashboard/", user: testUser, pass: testPassword}, http.StatusOK, `<link rel="manifest" crossorigin="use-credentials" href="/dashboard/manifest.json"/>`},
			{"RightDeepLink", creds, request{path: "/dashboard/queues/digicert?status=archived", user: testUser, pass: testPassword}, http.StatusOK, `crossorigin="use-credentials"`},
			{"RightAPI", creds, request{path: "/dashboard/api/queues", user: testUser, pass: testPassword}, http.StatusOK, `"queue":"digicert"`},
			{"RightManifest", creds, request{path: "/dashboard/manifest.json", user: testUser, pass: testPassword}, http.StatusOK, `"name"`},
			{"NoAuthRoot", opsserver.DashboardConfig{NoAuth: true}, request{path: "/dashboard/"}, http.StatusOK, "<title>Asynq - Monitoring</title>"},
			{"NoAuthAPI", opsserver.DashboardConfig{NoAuth: true}, request{path: "/dashboard/api/queues"}, http.StatusOK, `"queue":"opensrs"`},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				h := newServer(t, b.URL, rdb, tc.dash)
				rec := do(t, h, tc.req)
				require.Equal(t, tc.wantCode, rec.Code, rec.Body.String())
				require.Contains(t, rec.Body.String(), tc.wantBody)
				require.NotContains(t, rec.Body.String(), testPassword)
				if tc.wantCode == http.StatusUnauthorized {
					require.Equal(t, `Basic realm="certmail dashboard", charset="UTF-8"`, rec.Header().Get("WWW-Authenticate"))
				}
				if tc.wantCode == http.StatusOK && strings.HasSuffix(tc.req.path, "/") {
					require.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
				}
			})
		}
	})
}

func TestDashboardReadOnly(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		s := seed(t, rdb)
		insp := asynq.NewInspectorFromRedisClient(rdb)
		run := request{method: http.MethodPost, path: "/dashboard/api/queues/opensrs/archived_tasks/" + s.OpenSRSDead + ":run",
			user: testUser, pass: testPassword}

		// In order: the read-only dashboard must refuse before the
		// read-write one changes the task.
		steps := []struct {
			name      string
			readOnly  bool
			wantCode  int
			wantState asynq.TaskState
		}{
			{"ReadOnlyRefuses", true, http.StatusMethodNotAllowed, asynq.TaskStateArchived},
			{"ReadWriteRuns", false, http.StatusNoContent, asynq.TaskStatePending},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				h := newServer(t, b.URL, rdb, opsserver.DashboardConfig{User: testUser, Password: testPassword, ReadOnly: st.readOnly})
				rec := do(t, h, run)
				require.Equal(t, st.wantCode, rec.Code, rec.Body.String())
				info, err := insp.GetTaskInfo(tasks.QueueOpenSRS, s.OpenSRSDead)
				require.NoError(t, err)
				require.Equal(t, st.wantState, info.State)
			})
		}
	})
}

func TestDashboardMasksEmails(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		s := seed(t, rdb)
		h := newServer(t, b.URL, rdb, opsserver.DashboardConfig{User: testUser, Password: testPassword, ReadOnly: true})

		tests := []struct {
			name   string
			path   string
			fields []string // JSON fields of the (first) task that must hold the masked address
		}{
			{"Archived", "/dashboard/api/queues/digicert/archived_tasks", []string{"payload"}},
			{"Completed", "/dashboard/api/queues/digicert/completed_tasks", []string{"payload", "result"}},
			{"Task", "/dashboard/api/queues/digicert/tasks/" + s.DigiCertDone, []string{"payload", "result"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				rec := do(t, h, request{path: tc.path, user: testUser, pass: testPassword})
				require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
				body := rec.Body.String()
				require.NotContains(t, body, approver)

				var task map[string]any
				var list struct {
					Tasks []map[string]any `json:"tasks"`
				}
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list))
				if len(list.Tasks) > 0 {
					require.Len(t, list.Tasks, 1)
					task = list.Tasks[0]
				} else {
					require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &task))
				}
				for _, f := range tc.fields {
					require.Contains(t, task[f], approverMasked, "field %s", f)
				}
				if tc.name == "Archived" {
					require.Equal(t, s.DigiCertDead, task["id"])
					require.Equal(t, digicertErr, task["error_message"])
				}
			})
		}
	})
}

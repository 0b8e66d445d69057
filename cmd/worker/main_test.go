package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

func TestMain(m *testing.M) { redistest.Main(cleanRun{m}) }

// cleanRun removes the binaries testbin built once the tests have run.
type cleanRun struct{ m *testing.M }

func (c cleanRun) Run() int {
	defer testbin.Remove()
	return c.m.Run()
}

// syncBuffer is a bytes.Buffer safe for the worker's concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("k3y\n"), 0o600))
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring of the one-line message; exit 2
	}{
		{"no provider", nil, nil, "OPENSRS_API_KEY"},
		{"no provider names digicert too", nil, nil, "DIGICERT_API_KEY"},
		{"opensrs key without username", nil, map[string]string{"OPENSRS_API_KEY": "k"}, "OPENSRS_USERNAME"},
		{"opensrs username without key", nil, map[string]string{"OPENSRS_USERNAME": "u"}, "OPENSRS_API_KEY"},
		{"bad concurrency", nil, map[string]string{"DIGICERT_API_KEY": "k", "WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY"},
		{"zero concurrency flag", []string{"--concurrency", "0"}, map[string]string{"DIGICERT_API_KEY": "k"}, "WORKER_CONCURRENCY"},
		{"bad duration", nil, map[string]string{"DIGICERT_API_KEY": "k", "RETRY_BASE": "soon"}, "RETRY_BASE"},
		{"retry max below base", nil, map[string]string{"DIGICERT_API_KEY": "k", "RETRY_BASE": "1m", "RETRY_MAX": "30s"}, "RETRY_MAX"},
		{"key and key file", nil, map[string]string{"DIGICERT_API_KEY": "k", "DIGICERT_API_KEY_FILE": keyFile}, "DIGICERT_API_KEY_FILE"},
		{"missing key file", nil, map[string]string{"DIGICERT_API_KEY_FILE": "/nonexistent/key"}, "DIGICERT_API_KEY_FILE"},
		{"dashboard user without password", nil, map[string]string{"DIGICERT_API_KEY": "k", "DASHBOARD_USER": "ops"}, "DASHBOARD_PASSWORD"},
		{"bad readonly", nil, map[string]string{"DIGICERT_API_KEY": "k", "DASHBOARD_READONLY": "maybe"}, "DASHBOARD_READONLY"},
		{"bad redis url", nil, map[string]string{"DIGICERT_API_KEY": "k", "REDIS_URL": "http://x"}, "REDIS_URL"},
		{"sentinel url without master", nil, map[string]string{"DIGICERT_API_KEY": "k", "REDIS_URL": "redis-sentinel://:s3cret@127.0.0.1:26379/0"}, "REDIS_URL (--redis-url): master:"},
		{"sentinel url bad port flag", []string{"--redis-url", "redis-sentinel://:s3cret@127.0.0.1:0/0?master=m"}, map[string]string{"DIGICERT_API_KEY": "k"}, "port: address 1"},
		{"cluster url with db", nil, map[string]string{"DIGICERT_API_KEY": "k", "REDIS_URL": "redis-cluster://:s3cret@127.0.0.1:7000/1"}, "db: Redis Cluster has only database 0"},
		{"bad log level", nil, map[string]string{"DIGICERT_API_KEY": "k", "LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"bad rate limit", nil, map[string]string{"DIGICERT_API_KEY": "k", "DIGICERT_RATE_LIMIT": "lots"}, "DIGICERT_RATE_LIMIT"},
		{"bad rate limit flag", []string{"--opensrs-rate-limit", "5/0s"}, map[string]string{"DIGICERT_API_KEY": "k"}, "OPENSRS_RATE_LIMIT"},
		{"bad in-flight cap", nil, map[string]string{"DIGICERT_API_KEY": "k", "OPENSRS_MAX_IN_FLIGHT": "two"}, "OPENSRS_MAX_IN_FLIGHT"},
		{"negative in-flight cap flag", []string{"--digicert-max-in-flight", "-1"}, map[string]string{"DIGICERT_API_KEY": "k"}, "DIGICERT_MAX_IN_FLIGHT (--digicert-max-in-flight)"},
		{"bad provider concurrency", nil, map[string]string{"DIGICERT_API_KEY": "k", "OPENSRS_CONCURRENCY": "lots"}, "OPENSRS_CONCURRENCY"},
		{"negative provider concurrency flag", []string{"--digicert-concurrency", "-2"}, map[string]string{"DIGICERT_API_KEY": "k"}, "DIGICERT_CONCURRENCY (--digicert-concurrency)"},
		{"unknown flag", []string{"--nope"}, map[string]string{"DIGICERT_API_KEY": "k"}, "-nope"},
		{"stray argument", []string{"extra"}, map[string]string{"DIGICERT_API_KEY": "k"}, "extra"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr, envOf(tc.env))
			require.Equal(t, exitUsage, code, stderr.String())
			require.Contains(t, stderr.String(), tc.wantErr)
			require.NotContains(t, stderr.String(), "s3cret")
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}
}

// TestConfigErrorsBeforeConnecting: every bad setting exits 2 naming it,
// before the worker connects to anything. REDIS_URL points at a port nothing
// listens on, so a connection attempt first would exit 1 ("unreachable").
func TestConfigErrorsBeforeConnecting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"http addr without port", nil, map[string]string{"HTTP_ADDR": "nonsense"}, "HTTP_ADDR"},
		{"http addr port out of range", nil, map[string]string{"HTTP_ADDR": ":99999"}, "HTTP_ADDR"},
		{"http addr port not a number", nil, map[string]string{"HTTP_ADDR": "127.0.0.1:eighty"}, "HTTP_ADDR"},
		{"http addr flag", []string{"--http-addr", "127.0.0.1"}, nil, "HTTP_ADDR"},
		{"retention below the floor", nil, map[string]string{"OUTCOME_RETENTION": "59m"}, "OUTCOME_RETENTION"},
		{"retention flag below the floor", []string{"--outcome-retention", "10m"}, nil, "OUTCOME_RETENTION"},
		{"dead-letter retention below the floor", nil, map[string]string{"DEADLETTER_RETENTION": "1h"}, "DEADLETTER_RETENTION"},
		{"dead-letter retention negative", []string{"--deadletter-retention", "-24h"}, nil, "DEADLETTER_RETENTION"},
		{"digicert url without slash", nil, map[string]string{"DIGICERT_URL": "https://www.digicert.com/services/v2"}, "DIGICERT_URL"},
		{"digicert key with spaces", nil, map[string]string{"DIGICERT_API_KEY": " k "}, "DIGICERT_API_KEY"},
		{"opensrs url relative", nil, map[string]string{"OPENSRS_USERNAME": "u", "OPENSRS_API_KEY": "k", "OPENSRS_URL": "opensrs/"}, "OPENSRS_URL"},
		{"dashboard no-auth with credentials", []string{"--dashboard-no-auth"}, map[string]string{"DASHBOARD_USER": "ops", "DASHBOARD_PASSWORD": "pw"}, "--dashboard-no-auth"},
		{"dashboard user with colon", nil, map[string]string{"DASHBOARD_USER": "o:ps", "DASHBOARD_PASSWORD": "pw"}, "DASHBOARD_USER"},
		{"demo with a bad redis url", []string{"--demo", "--redis-url", "http://x"}, nil, "REDIS_URL"},
		{"shutdown timeout", nil, map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, "SHUTDOWN_TIMEOUT"},
		{"provider timeout", nil, map[string]string{"PROVIDER_TIMEOUT": "10ms"}, "PROVIDER_TIMEOUT"},
		{"rate limit wait", nil, map[string]string{"RATE_LIMIT_WAIT": "-1s"}, "RATE_LIMIT_WAIT"},
		{"reconcile interval", nil, map[string]string{"RECONCILE_INTERVAL": "1ms"}, "RECONCILE_INTERVAL"},
		{"log level", nil, map[string]string{"LOG_LEVEL": "trace"}, "LOG_LEVEL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DIGICERT_API_KEY": "k", "REDIS_URL": "redis://127.0.0.1:1/0"}
			for k, v := range tc.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr, envOf(env))
			require.Equal(t, exitUsage, code, stderr.String())
			require.Contains(t, stderr.String(), tc.wantErr)
			require.NotContains(t, stderr.String(), "unreachable")
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), []string{"--help"}, &stdout, &stderr, envOf(nil)))
	for _, v := range []string{"REDIS_URL", "WORKER_CONCURRENCY", "OPENSRS_API_KEY[_FILE]", "DIGICERT_URL", "PROVIDER_TIMEOUT", "RETRY_BASE", "HTTP_ADDR", "DASHBOARD_PASSWORD", "-demo"} {
		require.Contains(t, stdout.String(), v)
	}
	require.Empty(t, stderr.String())
}

func TestUnreachableRedis(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"--http-addr", "off"}, &stdout, &stderr,
		envOf(map[string]string{"DIGICERT_API_KEY": "k", "REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}))
	require.Equal(t, exitFailure, code)
	last := lastLine(stderr.String())
	require.Contains(t, last, "redis unreachable at 127.0.0.1:1")
	require.NotContains(t, stderr.String(), "s3cret")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// runningWorker is a running worker in demo mode against a test Redis.
type runningWorker struct {
	addr   string
	demo   *demoEnv
	stderr *syncBuffer
	stdout *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

// hooks let a test take part in the worker it starts.
type hooks struct {
	// recorder, if set, wraps the handler's recorder (e.g. to slow it down).
	recorder func(tasks.Recorder) tasks.Recorder
}

func startWorker(t *testing.T, b redistest.Backend, extra ...string) *runningWorker {
	t.Helper()
	return startWorkerHooks(t, b, &hooks{}, extra...)
}

// startWorkerHooks starts the worker as run does with --demo, its
// dependencies fed by startDemo, then by h.
func startWorkerHooks(t *testing.T, b redistest.Backend, h *hooks, extra ...string) *runningWorker {
	t.Helper()
	w := &runningWorker{stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan int, 1)}
	args := append([]string{"--demo", "--demo-samples=false", "--redis-url", b.URL, "--http-addr", "127.0.0.1:0", "--concurrency", "4"}, extra...)
	cfg, err := loadConfig(args, io.Discard, envOf(nil))
	require.NoError(t, err)
	d := deps{stdout: w.stdout, stderr: w.stderr}
	demo, err := startDemo(cfg, &d)
	require.NoError(t, err)
	t.Cleanup(demo.Close)
	if h.recorder != nil {
		demoRecorder := d.recorder
		d.recorder = func(r tasks.Recorder) tasks.Recorder { return h.recorder(demoRecorder(r)) }
	}
	ready := make(chan struct{})
	demoStarted := d.started
	d.started = func(ctx context.Context, sw *worker) {
		demoStarted(ctx, sw)
		w.addr, w.demo = sw.httpAddr, demo
		close(ready)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		if err := serve(ctx, cfg, d); err != nil {
			w.done <- exitFailure
			return
		}
		w.done <- exitOK
	}()
	select {
	case <-ready:
	case code := <-w.done:
		t.Fatalf("worker exited early (%d): %s", code, w.stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("worker did not start: %s", w.stderr.String())
	}
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *runningWorker) stop(t *testing.T) int {
	t.Helper()
	w.cancel()
	select {
	case code, ok := <-w.done:
		if !ok {
			return exitOK
		}
		close(w.done)
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("worker did not stop")
		return -1
	}
}

func waitState(t *testing.T, insp *asynq.Inspector, queue, id string, want asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	require.Eventually(t, func() bool {
		var err error
		info, err = insp.GetTaskInfo(queue, id)
		return err == nil && info.State == want
	}, 30*time.Second, 50*time.Millisecond, "task %s never reached %s (last: %+v)", id, want, info)
	return info
}

// TestWorkerEndToEnd drives the worker binary's run path against both Redis
// backends and the provider simulators: success, transient then success,
// permanent → dead letter, the HTTP endpoints, the logs, and a clean stop.
func TestWorkerEndToEnd(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		w := startWorker(t, b)
		w.demo.opensrs.SetBehavior("1002", opensrstest.Behavior{TransientFailures: 1})
		w.demo.opensrs.SetBehavior("1003", opensrstest.Behavior{ErrorCode: 480})

		rdb := b.Client(t)
		enq := tasks.NewEnqueuer(rdb)
		defer enq.Close()
		insp := asynq.NewInspectorFromRedisClient(rdb)
		defer insp.Close()
		opts := tasks.DefaultOptions()
		opts.MaxRetry = 3

		ok, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("1001", "ref-ok", false), opts)
		require.NoError(t, err)
		retry, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("1002", "", false), opts)
		require.NoError(t, err)
		dead, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("1003", "", false), opts)
		require.NoError(t, err)
		dc, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: "2001", Locale: "en"}, opts)
		require.NoError(t, err)

		info := waitState(t, insp, "opensrs", ok.ID, asynq.TaskStateCompleted)
		require.Contains(t, string(info.Result), `"order_id":"1001"`)
		waitState(t, insp, "digicert", dc.ID, asynq.TaskStateCompleted)
		info = waitState(t, insp, "opensrs", dead.ID, asynq.TaskStateArchived)
		require.Equal(t, "opensrs: 480 Item not found (permanent)", info.LastErr)
		info = waitState(t, insp, "opensrs", retry.ID, asynq.TaskStateCompleted)
		require.Equal(t, 1, info.Retried)

		store := outcome.NewStore(rdb, 0)
		as, err := store.Attempts(t.Context(), retry.ID)
		require.NoError(t, err)
		require.Len(t, as, 2)
		require.Equal(t, outcome.Retrying, as[0].Outcome)
		require.Equal(t, outcome.Succeeded, as[1].Outcome)
		d, found, err := store.DeadLetter(t.Context(), dead.ID)
		require.NoError(t, err)
		require.True(t, found)
		require.Equal(t, "permanent", d.Class)

		// Exactly one provider call per delivered resend.
		require.Equal(t, 1, w.demo.opensrs.Count("1001"))
		require.Equal(t, 2, w.demo.opensrs.Count("1002"))
		require.Equal(t, 1, w.demo.opensrs.Count("1003"))

		for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/dashboard/": 200} {
			resp, err := http.Get("http://" + w.addr + path)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, want, resp.StatusCode, path)
			if path == "/metrics" {
				require.Contains(t, string(body), `certmail_attempts_total{outcome="succeeded",provider="opensrs"} 2`)
			}
		}

		require.Equal(t, exitOK, w.stop(t))
		logs := w.stderr.String()
		require.NotContains(t, logs, demoKey, "API key leaked into logs")
		require.NotContains(t, w.stdout.String(), demoKey)
		for _, field := range []string{`"task_id":"` + retry.ID, `"type":"opensrs:resend_cert_email"`, `"provider":"opensrs"`, `"order_id":"1002"`, `"attempt":2`, `"outcome":"succeeded"`, `"duration_ms":`} {
			require.Contains(t, logs, field)
		}
		require.Contains(t, logs, `"msg":"worker stopped"`)
	})
}

// TestGracefulShutdown: a task in flight when SIGTERM arrives finishes if it
// can within SHUTDOWN_TIMEOUT, and is put back (not lost, not dead) if not.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		delay     time.Duration
		shutdown  string
		wantState asynq.TaskState
		wantCalls int
	}{
		{"finishes within the grace period", 1500 * time.Millisecond, "10s", asynq.TaskStateCompleted, 1},
		{"requeued after the grace period", 20 * time.Second, "1s", asynq.TaskStatePending, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := redistest.Mini(t)
			w := startWorker(t, b, "--shutdown-timeout", tc.shutdown)
			w.demo.opensrs.SetBehavior("4242", opensrstest.Behavior{Delay: tc.delay})
			rdb := b.Client(t)
			enq := tasks.NewEnqueuer(rdb)
			defer enq.Close()
			insp := asynq.NewInspectorFromRedisClient(rdb)
			defer insp.Close()
			opts := tasks.DefaultOptions()
			opts.MaxRetry = 0 // even with no budget left, a shutdown must not kill it
			res, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("4242", "", false), opts)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return w.demo.opensrs.Count("4242") == 1 || len(w.demo.opensrs.Requests()) > 0 },
				10*time.Second, 20*time.Millisecond, "task never reached the provider")
			waitState(t, insp, "opensrs", res.ID, asynq.TaskStateActive)
			require.Equal(t, exitOK, w.stop(t))
			info, err := insp.GetTaskInfo("opensrs", res.ID)
			require.NoError(t, err)
			require.Equal(t, tc.wantState, info.State)
			require.Equal(t, 0, info.Retried)
			require.Equal(t, tc.wantCalls, w.demo.opensrs.Count("4242"))
			_, dead, err := outcome.NewStore(rdb, 0).DeadLetter(t.Context(), res.ID)
			require.NoError(t, err)
			require.False(t, dead, "an interrupted task is not dead")
		})
	}
}

// TestRateLimitSpacesRequests: DIGICERT_RATE_LIMIT holds requests back before
// they reach DigiCert (here 2 per 4 s: the third waits for its slot).
func TestRateLimitSpacesRequests(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		w := startWorker(t, b, "--digicert-rate-limit", "2/4s")
		rdb := b.Client(t)
		enq := tasks.NewEnqueuer(rdb)
		defer enq.Close()
		insp := asynq.NewInspectorFromRedisClient(rdb)
		defer insp.Close()
		var ids []string
		for _, order := range []string{"3001", "3002", "3003"} {
			res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: order}, tasks.DefaultOptions())
			require.NoError(t, err)
			ids = append(ids, res.ID)
		}
		for _, id := range ids {
			info := waitState(t, insp, "digicert", id, asynq.TaskStateCompleted)
			require.Equal(t, 0, info.Retried)
		}
		reqs := w.demo.digicert.Requests()
		require.Len(t, reqs, 3, "each resend reached DigiCert exactly once")
		spread := reqs[2].Time.Sub(reqs[0].Time)
		require.GreaterOrEqual(t, spread, 1500*time.Millisecond, "the third request waited for a slot")
	})
}

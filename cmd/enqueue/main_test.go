package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	redistest.Stop()
	os.Exit(code)
}

// cliResult is what one run of the CLI produced.
type cliResult struct {
	code           int
	stdout, stderr string
}

// lines splits output into its lines, without the final newline.
func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// runCLI runs the CLI in-process with REDIS_URL set to redisURL.
func runCLI(t testing.TB, redisURL, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		if k == "REDIS_URL" {
			return redisURL
		}
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut, getenv)
	return cliResult{code: code, stdout: out.String(), stderr: errOut.String()}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// requireID asserts a successful single enqueue: exit 0, the task ID alone on
// stdout, and returns the ID.
func requireID(t testing.TB, r cliResult) string {
	t.Helper()
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	require.Regexp(t, `^[^\n]+\n$`, r.stdout, "stdout must be exactly one line")
	id := strings.TrimSuffix(r.stdout, "\n")
	require.Regexp(t, uuidRE, id)
	return id
}

// requireUsage asserts exit 2 with one line on stderr containing want and
// nothing on stdout.
func requireUsage(t testing.TB, r cliResult, want string) {
	t.Helper()
	require.Equal(t, exitUsage, r.code, "stdout: %q stderr: %q", r.stdout, r.stderr)
	require.Empty(t, r.stdout)
	require.Len(t, lines(r.stderr), 1, "stderr must be one line: %q", r.stderr)
	require.True(t, strings.HasSuffix(r.stderr, "\n"))
	require.Contains(t, r.stderr, want)
}

// requireOneLineFailure asserts exit 1 with one line on stderr.
func requireOneLineFailure(t testing.TB, r cliResult, want string) {
	t.Helper()
	require.Equal(t, exitFailure, r.code, "stdout: %q stderr: %q", r.stdout, r.stderr)
	require.Empty(t, r.stdout)
	require.Len(t, lines(r.stderr), 1, "stderr must be one line: %q", r.stderr)
	require.Contains(t, r.stderr, want)
}

// closedURL is a redis URL on a loopback port nothing listens on.
func closedURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return "redis://127.0.0.1:" + strconv.Itoa(port) + "/0"
}

// env is a backend plus the clients tests inspect it with.
type testEnv struct {
	b    redistest.Backend
	rdb  *redis.Client
	insp *asynq.Inspector
}

func newEnv(t *testing.T, b redistest.Backend) *testEnv {
	t.Helper()
	rdb := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	return &testEnv{b: b, rdb: rdb, insp: insp}
}

func (e *testEnv) run(t testing.TB, args ...string) cliResult {
	t.Helper()
	return runCLI(t, e.b.URL, "", args...)
}

func (e *testEnv) runStdin(t testing.TB, stdin string, args ...string) cliResult {
	t.Helper()
	return runCLI(t, e.b.URL, stdin, args...)
}

// taskCount is the number of tasks in every certmail queue (any state but
// completed).
func (e *testEnv) taskCount(t testing.TB) int {
	t.Helper()
	n := 0
	qs, err := e.insp.Queues()
	require.NoError(t, err)
	for _, q := range qs {
		info, err := e.insp.GetQueueInfo(q)
		require.NoError(t, err)
		n += info.Size + info.Completed
	}
	return n
}

// requireEmpty asserts nothing at all was written to Redis.
func (e *testEnv) requireEmpty(t testing.TB) {
	t.Helper()
	n, err := e.rdb.DBSize(context.Background()).Result()
	require.NoError(t, err)
	require.Zero(t, n, "nothing may be enqueued")
}

// task finds a task by ID in the certmail queues.
func (e *testEnv) task(t testing.TB, id string) *asynq.TaskInfo {
	t.Helper()
	for _, q := range tasks.Queues {
		info, err := e.insp.GetTaskInfo(q, id)
		if err == nil {
			return info
		}
	}
	t.Fatalf("task %s not found", id)
	return nil
}

// dedupArgs returns the --dedup-window flags for the backend and a function
// that lets the window pass: FastForward on miniredis, a 1s window and a
// short sleep on the real server.
func dedupArgs(b redistest.Backend) ([]string, func()) {
	if b.Mini != nil {
		return nil, func() { b.Mini.FastForward(tasks.DefaultDedupWindow + time.Second) }
	}
	return []string{"--dedup-window", "1s"}, func() { time.Sleep(1200 * time.Millisecond) }
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter/deadlettertest"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// testEnv is one Redis with the clients a test needs.
type testEnv struct {
	url   string
	rdb   *redis.Client
	store *outcome.Store
	insp  *asynq.Inspector
	enq   *tasks.Enqueuer
}

func setup(t *testing.T, b redistest.Backend) *testEnv {
	t.Helper()
	rdb := b.Client(t)
	e := &testEnv{url: b.URL, rdb: rdb, store: outcome.NewStore(rdb, 0),
		insp: asynq.NewInspectorFromRedisClient(rdb), enq: tasks.NewEnqueuer(rdb)}
	t.Cleanup(func() { _ = e.insp.Close(); _ = e.enq.Close() })
	return e
}

// dlq runs the CLI against the env's Redis.
func (e *testEnv) dlq(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLI(t, map[string]string{"REDIS_URL": e.url}, args...)
}

func runCLI(t *testing.T, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(t.Context(), args, &out, &errOut, func(k string) string { return vars[k] })
	return code, out.String(), errOut.String()
}

// seeded names the dead letters of the standard fixture.
type seeded struct {
	notFound  string // opensrs cert email, permanent 404, max_retry 3, timeout 45s
	exhausted string // digicert, transient 503 twice, max_retry 1
	config    string // opensrs approve email, configuration 403
	invalid   string // opensrs payload with a bad order_id (crashes the contract)
}

var fixturePayloads = map[string]tasks.Payload{
	"notFound":  tasks.NewOpenSRSPayload("1001", "ticket-1", false),
	"exhausted": &tasks.DigiCertPayload{OrderID: "2002", DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
	"config":    tasks.NewOpenSRSPayload("1003", "", true),
}

// seed makes four dead letters through the real handler; three were
// enqueued with tasks.Enqueuer, so their dedup marks are still set.
func (e *testEnv) seed(t *testing.T) seeded {
	t.Helper()
	ctx := t.Context()
	enqueue := func(p tasks.Payload, maxRetry int, timeout time.Duration) string {
		o := tasks.DefaultOptions()
		o.MaxRetry, o.Timeout = maxRetry, timeout
		res, err := e.enq.Enqueue(ctx, p, o)
		require.NoError(t, err)
		require.False(t, res.Duplicate)
		return res.ID
	}
	s := seeded{
		notFound:  enqueue(fixturePayloads["notFound"], 3, 45*time.Second),
		exhausted: enqueue(fixturePayloads["exhausted"], 1, time.Minute),
		config:    enqueue(fixturePayloads["config"], 5, time.Minute),
	}
	client := asynq.NewClientFromRedisClient(e.rdb)
	defer client.Close()
	info, err := client.EnqueueContext(ctx, asynq.NewTask(tasks.TypeOpenSRSResendCertEmail, []byte(`{"order_id":"12x"}`),
		asynq.Queue(tasks.QueueOpenSRS), asynq.MaxRetry(2)))
	require.NoError(t, err)
	s.invalid = info.ID
	deadlettertest.Drain(t, e.rdb, deadlettertest.Resender{Errs: map[string]error{
		"1001": deadlettertest.Permanent(404, "order 1001 not found"),
		"2002": deadlettertest.Transient(503, "upstream returned 503 for admin@example.com"),
		"1003": deadlettertest.Configuration(403, "IP 192.0.2.7 is not allow-listed"),
	}}, 10)
	n, err := e.store.CountDead(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	return s
}

func (e *testEnv) taskInfo(t *testing.T, queue, id string) *asynq.TaskInfo {
	t.Helper()
	info, err := e.insp.GetTaskInfo(queue, id)
	if err != nil {
		require.ErrorIs(t, err, asynq.ErrTaskNotFound)
		return nil
	}
	return info
}

func (e *testEnv) hasDead(t *testing.T, id string) bool {
	t.Helper()
	has, err := e.store.HasDead(t.Context(), []string{id})
	require.NoError(t, err)
	return has[0]
}

func decodeList(t *testing.T, stdout string) []map[string]any {
	t.Helper()
	var out []map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &out), stdout)
	require.NotNil(t, out, "want [] rather than null")
	return out
}

func ids(items []map[string]any) []string {
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, it["id"].(string))
	}
	return out
}

// replayLines parses "OLD NEW" lines.
func replayLines(t *testing.T, stdout string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for line := range strings.Lines(stdout) {
		f := strings.Fields(line)
		require.Len(t, f, 2, "line %q", line)
		out[f[0]] = f[1]
	}
	return out
}

func requireOneLine(t *testing.T, stderr string) {
	t.Helper()
	require.Equal(t, 1, strings.Count(stderr, "\n"), "stderr: %q", stderr)
	require.True(t, strings.HasSuffix(stderr, "\n"), "stderr: %q", stderr)
}

func TestUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string // in the one-line stderr
	}{
		{"unknown command", []string{"frob"}, `unknown command "frob"`},
		{"bad provider", []string{"list", "--provider", "verisign"}, "dlq list: --provider: must be opensrs or digicert"},
		{"bad provider on replay", []string{"replay", "--all", "--provider=x"}, "dlq replay: --provider:"},
		{"bad since", []string{"list", "--since", "yesterday"}, "dlq list: --since: invalid duration"},
		{"negative since", []string{"delete", "--all", "--since", "-1h"}, "dlq delete: --since: must be a positive duration"},
		{"unknown flag", []string{"list", "--bogus"}, "dlq list: flag provided but not defined: -bogus"},
		{"unknown flag after ID", []string{"show", "ID", "--bogus"}, "-bogus"},
		{"flag without value", []string{"list", "--since"}, "flag needs an argument: -since"},
		{"list takes no IDs", []string{"list", "abc"}, `dlq list: unexpected argument "abc"`},
		{"show without ID", []string{"show"}, "dlq show: want exactly one task ID, got 0"},
		{"show two IDs", []string{"show", "a", "b", "--json"}, "dlq show: want exactly one task ID, got 2"},
		{"replay without target", []string{"replay"}, "dlq replay: give task IDs or --all"},
		{"replay IDs and all", []string{"replay", "a", "--all"}, "dlq replay: --all: give task IDs or --all, not both"},
		{"delete without target", []string{"delete", "--provider", "opensrs"}, "dlq delete: give task IDs or --all"},
		{"delete IDs and all", []string{"delete", "--all", "a"}, "dlq delete: --all:"},
		{"bad redis url", []string{"list", "--redis-url", "http://x"}, "dlq list: --redis-url: must be a URL like redis://"},
		{"sentinel url without master", []string{"list", "--redis-url", "redis-sentinel://:s3cret@127.0.0.1:26379/0"}, "dlq list: --redis-url: master:"},
		{"sentinel url bad port", []string{"show", "ID", "--redis-url", "redis-sentinel://:s3cret@127.0.0.1:26379,h:x/0?master=m"}, "dlq show: --redis-url: port: address 2"},
		{"cluster url with db", []string{"replay", "--all", "--redis-url", "redis-cluster://:s3cret@127.0.0.1:7000/2"}, "dlq replay: --redis-url: db:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, nil, tc.args...)
			require.Equal(t, exitUsage, code, stderr)
			require.Empty(t, stdout)
			requireOneLine(t, stderr)
			require.Contains(t, stderr, tc.want)
			require.NotContains(t, stderr, "s3cret")
		})
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantPos []string
		json    bool
		since   string
	}{
		{"flags first", []string{"--json", "a", "b"}, []string{"a", "b"}, true, ""},
		{"flags last", []string{"a", "b", "--json"}, []string{"a", "b"}, true, ""},
		{"interleaved", []string{"a", "--since", "1h", "b", "-json"}, []string{"a", "b"}, true, "1h"},
		{"double dash ends flags", []string{"a", "--", "--json"}, []string{"a", "--json"}, false, ""},
		{"none", nil, nil, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var o opts
			fs := newFlagSet("dlq test", "", &o, func(string) string { return "" })
			o.registerFilters(fs)
			fs.BoolVar(&o.json, "json", false, "")
			pos, err := parse(fs, tc.args, io.Discard)
			require.NoError(t, err)
			require.Equal(t, tc.wantPos, pos)
			require.Equal(t, tc.json, o.json)
			require.Equal(t, tc.since, o.since)
			require.Equal(t, "redis://127.0.0.1:6379/0", o.redisURL, "the default")
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"top", []string{"--help"}, []string{"list", "show", "replay", "delete", "--redis-url", "Exit codes"}},
		{"top short", []string{"-h"}, []string{"Usage: dlq COMMAND"}},
		{"list", []string{"list", "--help"}, []string{"Usage: dlq list", "-provider", "-since", "-error-contains", "-json", "-redis-url"}},
		{"show", []string{"show", "-h"}, []string{"Usage: dlq show ID"}},
		{"replay", []string{"replay", "x", "--help"}, []string{"Usage: dlq replay", "-dry-run", "-all", "OLD_ID -"}},
		{"delete", []string{"delete", "-h"}, []string{"Usage: dlq delete", "-all"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, nil, tc.args...)
			require.Equal(t, exitOK, code)
			require.Empty(t, stderr)
			for _, w := range tc.want {
				require.Contains(t, stdout, w)
			}
		})
	}
	t.Run("NoArgs", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runCLI(t, nil)
		require.Equal(t, exitUsage, code)
		require.Empty(t, stdout)
		require.Equal(t, "dlq: missing command (want list, show, replay or delete; see dlq --help)\n", stderr, "one line")
	})
}

func TestUnreachableRedis(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	tests := []struct {
		name string
		vars map[string]string
		args []string
	}{
		{"flag", nil, []string{"list", "--redis-url", "redis://:s3cret-pw@" + addr + "/0"}},
		{"env", map[string]string{"REDIS_URL": "redis://user:s3cret-pw@" + addr + "/3"}, []string{"show", "some-id", "--json"}},
		{"replay", map[string]string{"REDIS_URL": "redis://:s3cret-pw@" + addr}, []string{"replay", "--all", "--dry-run"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, stdout, stderr := runCLI(t, tc.vars, tc.args...)
			require.Equal(t, exitFailure, code)
			require.Empty(t, stdout)
			requireOneLine(t, stderr)
			require.Contains(t, stderr, "redis unreachable at "+addr+": ")
			require.Contains(t, stderr, "(check --redis-url or REDIS_URL)")
			require.NotContains(t, stderr, "s3cret-pw")
			require.Less(t, time.Since(start), 7*time.Second)
		})
	}
}

func TestListAndShow(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)

		// An older dead letter, for --since.
		old := "old-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		oldAt := time.Now().Add(-48 * time.Hour).UTC().Truncate(time.Millisecond)
		require.NoError(t, e.store.Record(t.Context(),
			outcome.Attempt{TaskID: old, Type: tasks.TypeOpenSRSResendCertEmail, Queue: "opensrs", Provider: "opensrs", OrderID: "1009", Attempt: 1, Outcome: outcome.Dead, Class: "permanent", At: oldAt},
			&outcome.DeadLetter{ID: old, Type: tasks.TypeOpenSRSResendCertEmail, Queue: "opensrs", Provider: "opensrs", OrderID: "1009",
				Payload: outcome.Payload(`{"order_id":"1009"}`), MaxRetry: 10, LastError: "order 1009 cancelled", LastFailedAt: oldAt, Class: "permanent", Source: "handler"}))
		all := []string{old, s.notFound, s.exhausted, s.config, s.invalid}

		t.Run("JSONContract", func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := e.dlq(t, "list", "--json")
			require.Equal(t, exitOK, code, stderr)
			require.Empty(t, stderr)
			items := decodeList(t, stdout)
			require.ElementsMatch(t, all, ids(items))
			require.Equal(t, old, items[0]["id"], "oldest death first")
			byID := map[string]map[string]any{}
			for _, it := range items {
				require.ElementsMatch(t, []string{"id", "type", "queue", "provider", "order_id", "reference", "payload",
					"retried", "max_retry", "last_error", "last_failed_at", "class", "source"}, keys(it))
				byID[it["id"].(string)] = it
			}
			nf := byID[s.notFound]
			require.Equal(t, tasks.TypeOpenSRSResendCertEmail, nf["type"])
			require.Equal(t, "opensrs", nf["queue"])
			require.Equal(t, "opensrs", nf["provider"])
			require.Equal(t, "1001", nf["order_id"])
			require.Equal(t, "ticket-1", nf["reference"])
			require.Equal(t, map[string]any{"order_id": "1001", "reference": "ticket-1"}, nf["payload"])
			require.EqualValues(t, 0, nf["retried"])
			require.EqualValues(t, 3, nf["max_retry"])
			require.Contains(t, nf["last_error"], "order 1001 not found")
			require.Equal(t, "permanent", nf["class"])
			require.Equal(t, "handler", nf["source"])
			at, err := time.Parse(time.RFC3339Nano, nf["last_failed_at"].(string))
			require.NoError(t, err)
			require.WithinDuration(t, time.Now(), at, time.Minute)

			ex := byID[s.exhausted]
			require.EqualValues(t, 1, ex["retried"])
			require.EqualValues(t, 1, ex["max_retry"])
			require.Equal(t, "retries_exhausted", ex["class"])
			require.Equal(t, "", ex["reference"], "empty reference is present, not omitted")
			require.Equal(t, "2002", ex["payload"].(map[string]any)["order_id"])
			require.Equal(t, "configuration", byID[s.config]["class"])
			require.Equal(t, "invalid_payload", byID[s.invalid]["class"])
			require.Equal(t, "12x", byID[s.invalid]["order_id"])
		})

		filters := []struct {
			name string
			args []string
			want []string
		}{
			{"all", nil, all},
			{"provider opensrs", []string{"--provider", "opensrs"}, []string{old, s.notFound, s.config, s.invalid}},
			{"provider digicert", []string{"--provider=digicert"}, []string{s.exhausted}},
			{"since 24h", []string{"--since", "24h"}, []string{s.notFound, s.exhausted, s.config, s.invalid}},
			{"since 3d", []string{"--since", "3d"}, all},
			{"error contains any case", []string{"--error-contains", "NOT FOUND"}, []string{s.notFound}},
			{"error contains and provider", []string{"--error-contains", "Not Found", "--provider", "opensrs", "--since", "1h"}, []string{s.notFound}},
			{"nothing matches", []string{"--error-contains", "no such text"}, []string{}},
			{"nothing matches digicert", []string{"--provider", "digicert", "--error-contains", "allow-listed"}, []string{}},
		}
		for _, tc := range filters {
			t.Run("Filter/"+tc.name, func(t *testing.T) {
				t.Parallel()
				code, stdout, stderr := e.dlq(t, append([]string{"list", "--json"}, tc.args...)...)
				require.Equal(t, exitOK, code, stderr)
				if len(tc.want) == 0 {
					require.Equal(t, "[]\n", stdout)
				}
				require.ElementsMatch(t, tc.want, ids(decodeList(t, stdout)))

				code, stdout, stderr = e.dlq(t, append([]string{"list"}, tc.args...)...)
				require.Equal(t, exitOK, code, stderr)
				lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
				require.Len(t, lines, len(tc.want)+1, "header plus one line per task:\n%s", stdout)
				require.True(t, strings.HasPrefix(lines[0], "ID "))
				for _, id := range tc.want {
					require.Contains(t, stdout, id)
				}
			})
		}

		t.Run("TableMasksEmails", func(t *testing.T) {
			t.Parallel()
			code, stdout, _ := e.dlq(t, "list", "--provider", "digicert")
			require.Equal(t, exitOK, code)
			require.Contains(t, stdout, "a***@example.com")
			require.NotContains(t, stdout, "admin@example.com")
		})

		t.Run("ShowJSON", func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := e.dlq(t, "show", s.exhausted, "--json")
			require.Equal(t, exitOK, code, stderr)
			var got struct {
				ID         string            `json:"id"`
				Retried    int               `json:"retried"`
				MaxRetry   int               `json:"max_retry"`
				State      *string           `json:"asynq_state"`
				Attempts   []outcome.Attempt `json:"attempts"`
				Payload    map[string]any    `json:"payload"`
				LastError  string            `json:"last_error"`
				LastFailed time.Time         `json:"last_failed_at"`
			}
			require.NoError(t, json.Unmarshal([]byte(stdout), &got))
			require.Equal(t, s.exhausted, got.ID)
			require.NotNil(t, got.State)
			require.Equal(t, "archived", *got.State)
			require.Len(t, got.Attempts, 2)
			require.Equal(t, 1, got.Attempts[0].Attempt)
			require.Equal(t, outcome.Retrying, got.Attempts[0].Outcome)
			require.Equal(t, 2, got.Attempts[1].Attempt)
			require.Equal(t, outcome.Dead, got.Attempts[1].Outcome)
			require.Equal(t, 503, got.Attempts[1].HTTPStatus)
			require.Equal(t, "2002", got.Payload["order_id"])
		})

		t.Run("ShowTable", func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := e.dlq(t, "show", "--redis-url", e.url, s.notFound)
			require.Equal(t, exitOK, code, stderr)
			require.Contains(t, stdout, "asynq_state:")
			require.Contains(t, stdout, "archived")
			require.Contains(t, stdout, "attempts (1):")
			require.Contains(t, stdout, "order 1001 not found")
		})

		t.Run("ShowWithoutAsynqTask", func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := e.dlq(t, "show", old, "--json")
			require.Equal(t, exitOK, code, stderr)
			var got map[string]any
			require.NoError(t, json.Unmarshal([]byte(stdout), &got))
			require.Contains(t, got, "asynq_state")
			require.Nil(t, got["asynq_state"])
			require.Len(t, got["attempts"], 1)
		})

		unknown := []struct {
			name string
			args []string
		}{
			{"show", []string{"show", "no-such-id"}},
			{"show json", []string{"show", "no-such-id", "--json"}},
			{"replay", []string{"replay", "no-such-id"}},
			{"replay dry run", []string{"replay", "--dry-run", "no-such-id"}},
			{"delete", []string{"delete", "no-such-id"}},
		}
		for _, tc := range unknown {
			t.Run("UnknownID/"+tc.name, func(t *testing.T) {
				t.Parallel()
				code, stdout, stderr := e.dlq(t, tc.args...)
				require.Equal(t, exitFailure, code)
				require.Empty(t, stdout)
				requireOneLine(t, stderr)
				require.Contains(t, stderr, "no-such-id: no such dead letter")
			})
		}
	})
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestReplay(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)
		ctx := t.Context()

		code, stdout, stderr := e.dlq(t, "replay", s.notFound, s.exhausted)
		require.Equal(t, exitOK, code, stderr)
		require.Equal(t, 2, strings.Count(stdout, "\n"))
		got := replayLines(t, stdout)
		require.Len(t, got, 2)

		for _, tc := range []struct {
			old, queue, payload string
			maxRetry            int
			timeout             time.Duration
		}{
			{s.notFound, "opensrs", `{"order_id":"1001","reference":"ticket-1"}`, 3, 45 * time.Second},
			{s.exhausted, "digicert", `{"order_id":"2002","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}]}`, 1, time.Minute},
		} {
			newID := got[tc.old]
			require.NotEmpty(t, newID)
			require.NotEqual(t, tc.old, newID)
			info := e.taskInfo(t, tc.queue, newID)
			require.NotNil(t, info, "new task exists")
			require.Equal(t, asynq.TaskStatePending, info.State)
			require.Equal(t, 0, info.Retried, "fresh retry budget")
			require.Equal(t, tc.maxRetry, info.MaxRetry)
			require.Equal(t, tc.timeout, info.Timeout)
			require.JSONEq(t, tc.payload, string(info.Payload))
			require.Nil(t, e.taskInfo(t, tc.queue, tc.old), "archived task deleted")
			require.False(t, e.hasDead(t, tc.old), "record deleted")
		}

		// The dedup marks of the original requests are still set, now
		// naming the replayed tasks: a new identical request is a duplicate
		// of a task that exists, yet replay was not blocked.
		o := tasks.DefaultOptions()
		o.MaxRetry, o.Timeout = 3, 45*time.Second
		dup, err := e.enq.Enqueue(ctx, fixturePayloads["notFound"], o)
		require.NoError(t, err)
		require.True(t, dup.Duplicate)
		require.Equal(t, got[s.notFound], dup.ID)

		// Untouched ones stay dead.
		require.True(t, e.hasDead(t, s.config))
		require.Equal(t, asynq.TaskStateArchived, e.taskInfo(t, "opensrs", s.config).State)

		// Replaying again: the records are gone, the tombstone says why.
		code, stdout, stderr = e.dlq(t, "replay", s.notFound)
		require.Equal(t, exitOK, code, "handled (by us) already")
		require.Empty(t, stdout)
		require.Equal(t, "dlq replay: "+s.notFound+": skipped: already replayed (as "+got[s.notFound]+") by another operator\n", stderr)
	})
}

func TestReplayAllWithFilter(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)
		code, stdout, stderr := e.dlq(t, "replay", "--all", "--provider", "opensrs", "--error-contains", "allow-listed")
		require.Equal(t, exitOK, code, stderr)
		got := replayLines(t, stdout)
		require.Len(t, got, 1)
		require.Contains(t, got, s.config)
		require.Equal(t, asynq.TaskStatePending, e.taskInfo(t, "opensrs", got[s.config]).State)
		for _, id := range []string{s.notFound, s.exhausted, s.invalid} {
			require.True(t, e.hasDead(t, id))
		}
	})
}

func TestReplayDryRun(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)
		snapshot := func() string {
			_, stdout, _ := e.dlq(t, "list", "--json")
			var sb strings.Builder
			sb.WriteString(stdout)
			for _, q := range tasks.Queues {
				qi, err := e.insp.GetQueueInfo(q)
				require.NoError(t, err)
				sb.WriteString(strconv.Itoa(qi.Pending) + "/" + strconv.Itoa(qi.Archived) + ";")
			}
			return sb.String()
		}
		before := snapshot()

		code, stdout, stderr := e.dlq(t, "replay", "--all", "--dry-run")
		require.Equal(t, exitFailure, code, "the invalid payload cannot be replayed")
		require.Equal(t, map[string]string{s.notFound: "-", s.exhausted: "-", s.config: "-"}, replayLines(t, stdout))
		requireOneLine(t, stderr)
		require.Contains(t, stderr, s.invalid)

		code, stdout, stderr = e.dlq(t, "replay", s.notFound, "--dry-run")
		require.Equal(t, exitOK, code, stderr)
		require.Equal(t, s.notFound+" -\n", stdout)

		require.Equal(t, before, snapshot())
	})
}

func TestReplayRefusals(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)
		// Someone pressed Run in the dashboard: the task is pending again.
		require.NoError(t, e.insp.RunTask("opensrs", s.notFound))

		code, stdout, stderr := e.dlq(t, "replay", s.notFound, s.invalid, s.exhausted)
		require.Equal(t, exitFailure, code)
		got := replayLines(t, stdout)
		require.Len(t, got, 1, "the others are still replayed")
		require.Contains(t, got, s.exhausted)

		errLines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		require.Len(t, errLines, 2, stderr)
		require.Contains(t, errLines[0], s.notFound)
		require.Contains(t, errLines[0], "not archived: it is pending")
		require.Contains(t, errLines[1], s.invalid)
		require.Contains(t, errLines[1], "payload does not validate: order_id: must be 1-20 ASCII digits")

		// Live task untouched, record kept; invalid one kept in both places.
		require.Equal(t, asynq.TaskStatePending, e.taskInfo(t, "opensrs", s.notFound).State)
		require.True(t, e.hasDead(t, s.notFound))
		require.True(t, e.hasDead(t, s.invalid))
		require.Equal(t, asynq.TaskStateArchived, e.taskInfo(t, "opensrs", s.invalid).State)

		// Delete refuses the live one too.
		code, stdout, stderr = e.dlq(t, "delete", s.notFound)
		require.Equal(t, exitFailure, code)
		require.Empty(t, stdout)
		requireOneLine(t, stderr)
		require.Contains(t, stderr, "not archived")
		require.Equal(t, asynq.TaskStatePending, e.taskInfo(t, "opensrs", s.notFound).State)
	})
}

func TestDelete(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		s := e.seed(t)

		code, stdout, stderr := e.dlq(t, "delete", s.invalid, "no-such-id")
		require.Equal(t, exitFailure, code)
		require.Equal(t, s.invalid+"\n", stdout)
		requireOneLine(t, stderr)
		require.Contains(t, stderr, "no-such-id: no such dead letter")
		require.False(t, e.hasDead(t, s.invalid))
		require.Nil(t, e.taskInfo(t, "opensrs", s.invalid))

		code, stdout, stderr = e.dlq(t, "delete", "--all", "--provider", "opensrs")
		require.Equal(t, exitOK, code, stderr)
		require.ElementsMatch(t, []string{s.notFound, s.config}, strings.Fields(stdout))
		for _, id := range []string{s.notFound, s.config} {
			require.False(t, e.hasDead(t, id))
			require.Nil(t, e.taskInfo(t, "opensrs", id))
		}
		// Attempt histories stay readable for the retention window.
		attempts, err := e.store.Attempts(t.Context(), s.notFound)
		require.NoError(t, err)
		require.Len(t, attempts, 1)

		code, stdout, _ = e.dlq(t, "list", "--json")
		require.Equal(t, exitOK, code)
		require.Equal(t, []string{s.exhausted}, ids(decodeList(t, stdout)))
	})
}

// TestCrashPath: a task archived without our handler running (the asynq
// recoverer after a worker crash; here Inspector.ArchiveTask) has no record
// until the reconcile every command runs first.
func TestCrashPath(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Parallel()
		e := setup(t, b)
		o := tasks.DefaultOptions()
		o.MaxRetry, o.Timeout = 7, 30*time.Second
		res, err := e.enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload("4242", "crash-1", false), o)
		require.NoError(t, err)
		require.NoError(t, e.insp.ArchiveTask("opensrs", res.ID))
		require.False(t, e.hasDead(t, res.ID))

		code, stdout, stderr := e.dlq(t, "list", "--json")
		require.Equal(t, exitOK, code, stderr)
		require.Contains(t, stderr, "recorded 1 dead letter(s) found only in asynq's archive")
		items := decodeList(t, stdout)
		require.Len(t, items, 1)
		it := items[0]
		require.Equal(t, res.ID, it["id"])
		require.Equal(t, "reconciled", it["source"])
		require.Equal(t, "unknown", it["class"])
		require.Equal(t, "4242", it["order_id"])
		require.Equal(t, "crash-1", it["reference"])
		require.EqualValues(t, 7, it["max_retry"])
		require.Equal(t, map[string]any{"order_id": "4242", "reference": "crash-1"}, it["payload"])

		// The second command finds nothing new.
		code, _, stderr = e.dlq(t, "show", res.ID)
		require.Equal(t, exitOK, code, stderr)
		require.Empty(t, stderr)

		code, stdout, stderr = e.dlq(t, "replay", res.ID)
		require.Equal(t, exitOK, code, stderr)
		newID := replayLines(t, stdout)[res.ID]
		info := e.taskInfo(t, "opensrs", newID)
		require.Equal(t, asynq.TaskStatePending, info.State)
		require.Equal(t, 0, info.Retried)
		require.Equal(t, 7, info.MaxRetry)
		require.Equal(t, 30*time.Second, info.Timeout)
		require.Nil(t, e.taskInfo(t, "opensrs", res.ID))
		require.False(t, e.hasDead(t, res.ID))
	})
}

// TestMoreThanAsynqKeeps: asynq trims its archive to 10,000 tasks per
// queue; the records keep all of them.
func TestMoreThanAsynqKeeps(t *testing.T) {
	t.Parallel()
	const n = 10_050
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		if !b.Real() {
			t.Skip("10k tasks take ~9x longer on miniredis; the real-redis half covers it")
		}
		if testing.Short() {
			t.Skip("slow (~15s under -race); skipped with -short")
		}
		t.Parallel()
		e := setup(t, b)
		ctx := t.Context()

		// Dead letters as the worker leaves them, minus the worker (which
		// takes ~25s for 10k tasks under -race): each task is enqueued and
		// gets the handler's records (attempt + dead letter); then asynq
		// archives them all, trimming its archive as it does on every archive.
		start := time.Now()
		client := asynq.NewClientFromRedisClient(e.rdb)
		defer client.Close()
		errs := make(chan error, n)
		jobs := make(chan int)
		for range 32 {
			go func() {
				for i := range jobs {
					errs <- deadOne(ctx, e, client, i)
				}
			}()
		}
		for i := range n {
			jobs <- i
		}
		close(jobs)
		for range n {
			require.NoError(t, <-errs)
		}
		archivedNow, err := e.insp.ArchiveAllPendingTasks(tasks.QueueOpenSRS)
		require.NoError(t, err)
		require.Equal(t, n, archivedNow)
		t.Logf("create %d dead letters: %v", n, time.Since(start).Round(time.Millisecond))

		qi, err := e.insp.GetQueueInfo(tasks.QueueOpenSRS)
		require.NoError(t, err)
		// asynq adds, then trims to its cap minus one (9,999 in v0.26.0).
		require.InDelta(t, 10_000, qi.Archived, 1, "asynq trimmed its archive")
		archived := qi.Archived
		count, err := e.store.CountDead(ctx)
		require.NoError(t, err)
		require.EqualValues(t, n, count)

		start = time.Now()
		code, stdout, stderr := e.dlq(t, "list", "--json")
		listed := time.Since(start)
		require.Equal(t, exitOK, code, stderr)
		require.Empty(t, stderr, "nothing to reconcile")
		items := decodeList(t, stdout)
		require.Len(t, items, n)
		seen := make(map[string]bool, n)
		for _, it := range items {
			seen[it["id"].(string)] = true
		}
		require.Len(t, seen, n)

		start = time.Now()
		code, stdout, stderr = e.dlq(t, "replay", "--all", "--dry-run")
		dry := time.Since(start)
		require.Equal(t, exitOK, code, stderr)
		lines := replayLines(t, stdout)
		require.Len(t, lines, n)
		for id, newID := range lines {
			require.True(t, seen[id])
			require.Equal(t, "-", newID)
		}
		qi, err = e.insp.GetQueueInfo(tasks.QueueOpenSRS)
		require.NoError(t, err)
		require.Equal(t, archived, qi.Archived)
		require.Zero(t, qi.Pending)

		t.Logf("asynq archive: %d; list --json: %v; replay --all --dry-run: %v",
			archived, listed.Round(time.Millisecond), dry.Round(time.Millisecond))
	})
}

// deadOne enqueues task i and records its death as the handler would.
func deadOne(ctx context.Context, e *testEnv, client *asynq.Client, i int) error {
	p := tasks.NewOpenSRSPayload(strconv.Itoa(100000+i), "bulk", false)
	task, err := tasks.NewTask(p, tasks.Options{MaxRetry: 2, Timeout: time.Minute}, "")
	if err != nil {
		return err
	}
	info, err := client.EnqueueContext(ctx, task)
	if err != nil {
		return err
	}
	at := time.Now()
	return e.store.Record(ctx,
		outcome.Attempt{TaskID: info.ID, Type: task.Type(), Queue: info.Queue, Provider: info.Queue, OrderID: p.Order(),
			Reference: p.Ref(), Attempt: 1, Outcome: outcome.Dead, Class: "permanent", HTTPStatus: 404,
			Error: "order not found", At: at},
		&outcome.DeadLetter{ID: info.ID, Type: task.Type(), Queue: info.Queue, Provider: info.Queue, OrderID: p.Order(),
			Reference: p.Ref(), Payload: outcome.Payload(task.Payload()), MaxRetry: 2, LastError: "order not found",
			LastFailedAt: at, Class: "permanent", Source: "handler"})
}

package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

func TestSingleEnqueue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		args        []string
		wantQueue   string
		wantType    string
		wantPayload string
	}{
		{"opensrs", []string{"opensrs", "--order-id", "1799"},
			"opensrs", "opensrs:resend_cert_email", `{"order_id":"1799"}`},
		{"opensrs reference", []string{"opensrs", "--order-id", "1799", "--reference", "TICKET-42"},
			"opensrs", "opensrs:resend_cert_email", `{"order_id":"1799","reference":"TICKET-42"}`},
		{"opensrs approve", []string{"opensrs", "--approve", "--order-id", "1799", "--reference", "R"},
			"opensrs", "opensrs:resend_approve_email", `{"order_id":"1799","reference":"R"}`},
		{"opensrs flags after equals", []string{"opensrs", "--order-id=00000000000000000001"},
			"opensrs", "opensrs:resend_cert_email", `{"order_id":"00000000000000000001"}`},
		{"digicert full", []string{"digicert", "--order-id", "12345", "--approval-email", "example.com=admin@example.com",
			"--locale", "en", "--reference", "…ünïcode ref"},
			"digicert", "digicert:resend_emails",
			`{"order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en","reference":"…ünïcode ref"}`},
		{"digicert order only", []string{"digicert", "--order-id", "12345"},
			"digicert", "digicert:resend_emails", `{"order_id":"12345"}`},
		{"digicert two emails in order", []string{"digicert", "--order-id", "12345",
			"--approval-email", "b.example.com=b@example.com", "--approval-email", "a.example.com=a@example.org", "--locale", "pt_BR"},
			"digicert", "digicert:resend_emails",
			`{"order_id":"12345","domain_approval_emails":[{"domain":"b.example.com","email":"b@example.com"},{"domain":"a.example.com","email":"a@example.org"}],"locale":"pt_BR"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				e := newEnv(t, b)
				r := e.run(t, tc.args...)
				id := requireID(t, r)
				require.Empty(t, r.stderr)

				info, err := e.insp.GetTaskInfo(tc.wantQueue, id)
				require.NoError(t, err)
				require.Equal(t, tc.wantType, info.Type)
				require.Equal(t, tc.wantQueue, info.Queue)
				require.Equal(t, asynq.TaskStatePending, info.State)
				require.Equal(t, tc.wantPayload, string(info.Payload), "payload bytes are the wire contract")
				require.Equal(t, tasks.DefaultMaxRetry, info.MaxRetry)
				require.Equal(t, tasks.DefaultTimeout, info.Timeout)
				require.Equal(t, 1, e.taskCount(t))
			})
		})
	}
}

func TestTaskOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		flags         []string
		wantMaxRetry  int
		wantTimeout   time.Duration
		wantScheduled time.Duration // 0: pending
	}{
		{"defaults", nil, 10, 60 * time.Second, 0},
		{"max retry and timeout", []string{"--max-retry", "3", "--timeout", "90s"}, 3, 90 * time.Second, 0},
		{"zero retries, minimum timeout", []string{"--max-retry=0", "--timeout=1s"}, 0, time.Second, 0},
		{"delay", []string{"--delay", "1h"}, 10, 60 * time.Second, time.Hour},
		{"all", []string{"--delay", "90s", "--max-retry", "25", "--timeout", "5m"}, 25, 5 * time.Minute, 90 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				e := newEnv(t, b)
				for _, provider := range []string{"opensrs", "digicert"} {
					before := time.Now()
					args := append([]string{provider, "--order-id", "777"}, tc.flags...)
					id := requireID(t, e.run(t, args...))
					info, err := e.insp.GetTaskInfo(provider, id)
					require.NoError(t, err)
					require.Equal(t, tc.wantMaxRetry, info.MaxRetry)
					require.Equal(t, tc.wantTimeout, info.Timeout)
					if tc.wantScheduled == 0 {
						require.Equal(t, asynq.TaskStatePending, info.State)
						continue
					}
					require.Equal(t, asynq.TaskStateScheduled, info.State)
					// asynq scores the scheduled set in whole seconds.
					want := before.Add(tc.wantScheduled)
					require.WithinDuration(t, want, info.NextProcessAt, 2*time.Second)
				}
			})
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", tasks.MaxReferenceLen+1)
	tests := []struct {
		name string
		args []string
		want string // substring of the one stderr line, naming the field/flag
	}{
		{"no args", nil, "command"},
		{"unknown command", []string{"sectigo", "--order-id", "1"}, `unknown command "sectigo"`},
		{"opensrs missing order id", []string{"opensrs"}, "--order-id: is required"},
		{"digicert missing order id", []string{"digicert", "--locale", "en"}, "--order-id: is required"},
		{"empty order id", []string{"opensrs", "--order-id", ""}, "--order-id: is required"},
		{"non-digit order id", []string{"opensrs", "--order-id", "12a4"}, "--order-id"},
		{"negative order id", []string{"opensrs", "--order-id=-1"}, "--order-id"},
		{"space in order id", []string{"opensrs", "--order-id", " 1799"}, "--order-id"},
		{"21 digits", []string{"digicert", "--order-id", strings.Repeat("1", 21)}, "--order-id"},
		{"approval email without =", []string{"digicert", "--order-id", "1", "--approval-email", "example.com"}, "approval-email"},
		{"approval email empty domain", []string{"digicert", "--order-id", "1", "--approval-email", "=a@example.com"}, "approval-email"},
		{"approval email empty email", []string{"digicert", "--order-id", "1", "--approval-email", "example.com="}, "approval-email"},
		{"approval email bad email", []string{"digicert", "--order-id", "1", "--approval-email", "example.com=not-an-email"}, "--approval-email"},
		{"approval email named email", []string{"digicert", "--order-id", "1", "--approval-email", "example.com=Admin <admin@example.com>"}, "--approval-email"},
		{"approval email bad domain", []string{"digicert", "--order-id", "1", "--approval-email", "-bad-.com=admin@example.com"}, "--approval-email"},
		{"approval email unqualified domain", []string{"digicert", "--order-id", "1", "--approval-email", "localhost=admin@example.com"}, "--approval-email"},
		{"approval email duplicate", []string{"digicert", "--order-id", "1", "--approval-email", "example.com=a@example.com", "--approval-email", "example.com=a@example.com"}, "--approval-email"},
		{"approval email on opensrs", []string{"opensrs", "--order-id", "1", "--approval-email", "example.com=a@example.com"}, "approval-email"},
		{"bad locale", []string{"digicert", "--order-id", "1", "--locale", "english"}, "--locale"},
		{"bad locale case", []string{"digicert", "--order-id", "1", "--locale", "pt_br"}, "--locale"},
		{"locale on opensrs", []string{"opensrs", "--order-id", "1", "--locale", "en"}, "locale"},
		{"too long reference", []string{"opensrs", "--order-id", "1", "--reference", long}, "--reference"},
		{"unprintable reference", []string{"opensrs", "--order-id", "1", "--reference", "a\nb"}, "--reference"},
		{"timeout under 1s", []string{"opensrs", "--order-id", "1", "--timeout", "500ms"}, "--timeout"},
		{"timeout not a duration", []string{"opensrs", "--order-id", "1", "--timeout", "soon"}, "timeout"},
		{"negative max retry", []string{"digicert", "--order-id", "1", "--max-retry", "-1"}, "--max-retry"},
		{"max retry not a number", []string{"digicert", "--order-id", "1", "--max-retry", "ten"}, "max-retry"},
		{"negative delay", []string{"opensrs", "--order-id", "1", "--delay", "-5s"}, "--delay"},
		{"negative dedup window", []string{"opensrs", "--order-id", "1", "--dedup-window", "-1s"}, "--dedup-window"},
		{"sub-second dedup window", []string{"opensrs", "--order-id", "1", "--dedup-window", "500ms"}, "--dedup-window"},
		{"timeout not whole seconds", []string{"opensrs", "--order-id", "1", "--timeout", "1500ms"}, "--timeout: must be whole seconds"},
		{"delay not whole seconds", []string{"opensrs", "--order-id", "1", "--delay", "2.5s"}, "--delay: must be whole seconds"},
		{"retention not whole seconds", []string{"opensrs", "--order-id", "1", "--retention", "90m0.5s"}, "--retention: must be whole seconds"},
		{"retention shorter than the dedup window", []string{"opensrs", "--order-id", "1", "--retention", "5m"}, "--retention: must be at least --dedup-window"},
		{"dedup window not whole milliseconds", []string{"opensrs", "--order-id", "1", "--dedup-window", "1s500us"}, "--dedup-window: must be whole milliseconds"},
		{"batch timeout not whole seconds", []string{"batch", "--timeout", "1500ms"}, "--timeout: must be whole seconds"},
		{"101 approval emails", append([]string{"digicert", "--order-id", "1"}, approvalFlags(101)...), "--approval-email (domain_approval_emails): must have at most 100 entries, got 101"},
		{"approval email too long", []string{"digicert", "--order-id", "1", "--approval-email", "example.com=" + strings.Repeat("a", 243) + "@example.com"}, "must be at most 254 characters"},
		{"unknown flag", []string{"opensrs", "--order-id", "1", "--bogus"}, "bogus"},
		{"flag missing value", []string{"opensrs", "--order-id"}, "order-id"},
		{"extra positional", []string{"opensrs", "--order-id", "1", "extra"}, `"extra"`},
		{"positional before flags", []string{"digicert", "extra", "--order-id", "1"}, `"extra"`},
		{"batch two files", []string{"batch", "a.jsonl", "b.jsonl"}, "FILE"},
		{"batch missing file", []string{"batch", filepath.Join("testdata", "does-not-exist.jsonl")}, "FILE"},
		{"batch zero concurrency", []string{"batch", "--concurrency", "0"}, "--concurrency"},
		{"batch bad option", []string{"batch", "--timeout", "0s"}, "--timeout"},
		{"status without id", []string{"status"}, "TASK_ID"},
		{"status two ids", []string{"status", "a", "b"}, "TASK_ID"},
		{"status unknown flag", []string{"status", "a", "--yaml"}, "yaml"},
	}
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				requireUsage(t, e.runStdin(t, `{"provider":"opensrs","order_id":"1"}`+"\n", tc.args...), tc.want)
				e.requireEmpty(t)
			})
		}
	})
}

func TestHelp(t *testing.T) {
	t.Parallel()
	// Help never touches Redis: point it at a closed port.
	url := closedURL(t)
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Usage: enqueue COMMAND", "opensrs", "digicert", "batch", "status"}},
		{[]string{"help"}, []string{"Usage: enqueue COMMAND"}},
		{[]string{"opensrs", "--help"}, []string{"Usage: enqueue opensrs", "--order-id", "-approve", "-redis-url", "-max-retry", "-timeout", "-delay", "-dedup-window"}},
		{[]string{"opensrs", "-h"}, []string{"Usage: enqueue opensrs"}},
		{[]string{"digicert", "--help"}, []string{"Usage: enqueue digicert", "-approval-email", "-locale", "-reference", "-redis-url"}},
		{[]string{"digicert", "--order-id", "1", "--help"}, []string{"Usage: enqueue digicert"}},
		{[]string{"batch", "--help"}, []string{"Usage: enqueue batch", "JSON Lines", "-concurrency", "-redis-url"}},
		{[]string{"status", "--help"}, []string{"Usage: enqueue status", "-json", "-redis-url"}},
		{[]string{"status", "some-id", "-h"}, []string{"Usage: enqueue status"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, url, "", tc.args...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			require.Empty(t, r.stderr)
			for _, w := range tc.want {
				require.Contains(t, r.stdout, w)
			}
		})
	}
}

func TestRedisUnreachable(t *testing.T) {
	t.Parallel()
	url := closedURL(t)
	for _, args := range [][]string{
		{"opensrs", "--order-id", "1"},
		{"digicert", "--order-id", "1", "--locale", "en"},
		{"status", "0b1f4c8e-1111-2222-3333-444455556666"},
		{"batch", "-"},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			// From the environment, and from the flag overriding a good env.
			r := runCLI(t, url, `{"provider":"opensrs","order_id":"1"}`+"\n", args...)
			requireOneLineFailure(t, r, "unreachable")
			r = runCLI(t, "redis://127.0.0.1:6379/0", `{"provider":"opensrs","order_id":"1"}`+"\n",
				append(args, "--redis-url", url)...)
			requireOneLineFailure(t, r, "unreachable")
		})
	}
}

func TestRedisURLSecrets(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-Pa55"
	closed := strings.TrimPrefix(closedURL(t), "redis://")
	tests := []struct {
		name string
		url  string
		code int
	}{
		{"wrong scheme", "http://:" + secret + "@127.0.0.1:6379/0", exitUsage},
		{"bad db", "redis://:" + secret + "@127.0.0.1:6379/notadb", exitUsage},
		{"unknown option", "redis://:" + secret + "@127.0.0.1:6379/0?bogus=1", exitUsage},
		{"unparseable", "redis://user:" + secret + "@[::1/0", exitUsage},
		{"no scheme", "user:" + secret + "@127.0.0.1:6379", exitUsage},
		{"sentinel without master", "redis-sentinel://:" + secret + "@127.0.0.1:26379/0", exitUsage},
		{"sentinel bad host list", "redis-sentinel://:" + secret + "@127.0.0.1:26379,/0?master=m", exitUsage},
		{"sentinel unknown parameter", "redis-sentinel://127.0.0.1:26379/0?master=m&sentinel_pasword=" + secret, exitUsage},
		{"cluster with db", "redis-cluster://:" + secret + "@127.0.0.1:7000/3", exitUsage},
		{"sentinel unreachable", "redis-sentinel://:" + secret + "@" + closed + "?master=m&sentinel_password=" + secret, exitFailure},
		{"unreachable with password", "redis://user:" + secret + "@" + closed, exitFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, args := range [][]string{
				{"opensrs", "--order-id", "1"},
				{"status", "0b1f4c8e-1111-2222-3333-444455556666"},
				{"batch"},
			} {
				// Via the environment and via the flag.
				for _, r := range []cliResult{
					runCLI(t, tc.url, "", args...),
					runCLI(t, "", "", append(args, "--redis-url", tc.url)...),
				} {
					require.Equal(t, tc.code, r.code, "stderr: %s", r.stderr)
					require.Len(t, lines(r.stderr), 1, "one line: %q", r.stderr)
					require.Contains(t, r.stderr, "redis")
					if tc.code == exitUsage {
						require.Contains(t, r.stderr, "--redis-url")
					}
					require.NotContains(t, r.stderr, secret)
					require.NotContains(t, r.stdout, secret)
				}
			}
		})
	}
}

// TestRedisPassword: a password full of URL-special characters, escaped in
// the URL, gets the CLI in; a wrong one fails without being echoed. It runs
// against a redis-server of its own started with --requirepass, or, where
// only REDIS_URL is available, as an ACL user of its own on the shared
// server. Only the first can also prove that a URL without credentials is
// refused: the shared server's default user needs none.
func TestRedisPassword(t *testing.T) {
	t.Parallel()
	const password = "p@ss w0rd/with:chars"
	escaped := "p%40ss%20w0rd%2Fwith%3Achars"

	var addr, user, db string
	var rdb *redis.Client
	if s, err := redistest.Own(t, "--requirepass", password); err == nil {
		addr, db = s.Addr(), "3"
		rdb = redis.NewClient(&redis.Options{Addr: addr, Password: password, DB: 3})
	} else {
		b := redistest.Real(t)
		opt, err := redis.ParseURL(b.URL)
		require.NoError(t, err)
		addr, db = opt.Addr, strconv.Itoa(opt.DB)
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		user = "certmail-test-" + hex.EncodeToString(rnd[:])
		admin := b.Client(t)
		require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", user, "on", ">"+password, "~*", "&*", "+@all").Err())
		t.Cleanup(func() { _ = admin.Do(context.Background(), "ACL", "DELUSER", user).Err() })
		opt.Username, opt.Password = user, password
		rdb = redis.NewClient(opt)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	require.Eventually(t, func() bool { return rdb.Ping(context.Background()).Err() == nil }, 10*time.Second, 20*time.Millisecond)

	good := "redis://" + user + ":" + escaped + "@" + addr + "/" + db
	id := requireID(t, runCLI(t, good, "", "opensrs", "--order-id", "1799"))
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo("opensrs", id)
	require.NoError(t, err)
	require.Equal(t, `{"order_id":"1799"}`, string(info.Payload))

	r := runCLI(t, "", "", "status", id, "--json", "--redis-url", good)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, id)

	bad := []string{"redis://" + user + ":wrong-" + escaped + "@" + addr + "/" + db}
	if user == "" {
		bad = append(bad, "redis://"+addr+"/"+db)
	}
	for _, u := range bad {
		r := runCLI(t, u, "", "opensrs", "--order-id", "1799")
		requireOneLineFailure(t, r, "redis")
		require.NotContains(t, r.stderr, "w0rd")
	}
}

func TestDeduplication(t *testing.T) {
	t.Parallel()
	requests := map[string][]string{
		"opensrs":  {"opensrs", "--order-id", "1799", "--reference", "R-1"},
		"approve":  {"opensrs", "--order-id", "1799", "--reference", "R-1", "--approve"},
		"digicert": {"digicert", "--order-id", "12345", "--approval-email", "example.com=admin@example.com", "--locale", "en"},
	}
	for name, req := range requests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				e := newEnv(t, b)
				window, expire := dedupArgs(b)
				req := append(append([]string(nil), req...), window...)

				first := e.run(t, req...)
				id1 := requireID(t, first)
				require.Empty(t, first.stderr)

				// Identical request inside the window: first ID, note on stderr.
				dup := e.run(t, req...)
				require.Equal(t, id1, requireID(t, dup))
				require.Equal(t, "duplicate of "+id1+"\n", dup.stderr)
				require.Equal(t, 1, e.taskCount(t), "no second task")

				// Options are not part of the request's identity.
				dup = e.run(t, append(req, "--max-retry", "2")...)
				require.Equal(t, id1, requireID(t, dup))

				// After the window, a new task even though the first was archived.
				require.NoError(t, e.insp.ArchiveTask(req[0], id1))
				expire()
				again := e.run(t, req...)
				id2 := requireID(t, again)
				require.NotEqual(t, id1, id2)
				require.Empty(t, again.stderr)
				require.Equal(t, 2, e.taskCount(t))
				require.Equal(t, asynq.TaskStateArchived, e.task(t, id1).State)
				require.Equal(t, asynq.TaskStatePending, e.task(t, id2).State)

				// And the new one dedupes in its own window.
				require.Equal(t, id2, requireID(t, e.run(t, req...)))
			})
		})
	}

	t.Run("different requests", func(t *testing.T) {
		t.Parallel()
		redistest.Each(t, func(t *testing.T, b redistest.Backend) {
			e := newEnv(t, b)
			seen := map[string]bool{}
			for _, args := range [][]string{
				{"opensrs", "--order-id", "1799"},
				{"opensrs", "--order-id", "1799", "--approve"},
				{"opensrs", "--order-id", "1799", "--reference", "x"},
				{"opensrs", "--order-id", "1800"},
				{"digicert", "--order-id", "1799"},
				{"digicert", "--order-id", "1799", "--locale", "en"},
			} {
				r := e.run(t, args...)
				id := requireID(t, r)
				require.Empty(t, r.stderr)
				require.False(t, seen[id])
				seen[id] = true
			}
			require.Equal(t, 6, e.taskCount(t))
		})
	})

	t.Run("window 0", func(t *testing.T) {
		t.Parallel()
		redistest.Each(t, func(t *testing.T, b redistest.Backend) {
			e := newEnv(t, b)
			seen := map[string]bool{}
			for i := range 3 {
				r := e.run(t, "opensrs", "--order-id", "1799", "--dedup-window", "0")
				id := requireID(t, r)
				require.Empty(t, r.stderr, "attempt %d", i)
				require.False(t, seen[id])
				seen[id] = true
			}
			require.Equal(t, 3, e.taskCount(t))
			// A mark is not left behind either: a later windowed request is new.
			r := e.run(t, "opensrs", "--order-id", "1799")
			require.False(t, seen[requireID(t, r)])
			require.Empty(t, r.stderr)
		})
	})
}

// TestExitCodesAreStable pins the numeric contract.
func TestExitCodesAreStable(t *testing.T) {
	require.Equal(t, []int{0, 1, 2}, []int{exitOK, exitFailure, exitUsage})
}

// approvalFlags returns n distinct --approval-email flags.
func approvalFlags(n int) []string {
	var args []string
	for i := range n {
		args = append(args, "--approval-email", fmt.Sprintf("d%d.example.com=admin@d%d.example.com", i, i))
	}
	return args
}

func TestLimitsAccepted(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		id := requireID(t, e.run(t, append([]string{"digicert", "--order-id", "1", "--timeout", "2s", "--delay", "3s", "--retention", "10m"}, approvalFlags(100)...)...))
		info := e.task(t, id)
		require.Equal(t, 2*time.Second, info.Timeout)
		require.Equal(t, 10*time.Minute, info.Retention)
	})
}

// TestMayHaveBeenEnqueued: when the task named by a dedup mark does not
// exist and its request may still be enqueueing, the CLI says so (exit 1)
// instead of "duplicate of" a task `enqueue status` cannot find.
func TestMayHaveBeenEnqueued(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		const orphan = "00000000-0000-4000-8000-0000000000aa"
		p := tasks.NewOpenSRSPayload("77", "", false)
		body, err := json.Marshal(p)
		require.NoError(t, err)
		// The mark's key, as tasks.dedupHash builds it.
		sum := sha256.Sum256(append([]byte(p.Type()+"\x00"), body...))
		key := rdb.DedupKey(hex.EncodeToString(sum[:]))
		// Set 20 s ago by a request that has not enqueued (yet).
		mark := fmt.Sprintf("%s %d", orphan, time.Now().Add(-20*time.Second).UnixMilli())
		require.NoError(t, e.rdb.Set(t.Context(), key, mark, time.Minute).Err())

		want := fmt.Sprintf("may have been enqueued as %s: check `enqueue status %s`", orphan, orphan)
		requireOneLineFailure(t, e.run(t, "opensrs", "--order-id", "77"), "enqueue opensrs: "+want)

		r := e.runStdin(t, `{"provider":"opensrs","order_id":"77"}`+"\n"+`{"provider":"opensrs","order_id":"78"}`+"\n", "batch")
		require.Equal(t, exitFailure, r.code)
		out := lines(r.stdout)
		require.Len(t, out, 2)
		require.Equal(t, "line 1: "+want, out[0])
		require.Regexp(t, uuidRE, out[1])
		require.NotContains(t, r.stderr, "duplicate of")
	})
}

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

const mixedFile = "testdata/mixed.jsonl"

// checkMixed asserts the output of a batch of testdata/mixed.jsonl and
// returns the IDs of its good lines (1, 7, 10).
func checkMixed(t *testing.T, e *testEnv, r cliResult) (opensrs, digicert, approve string) {
	t.Helper()
	require.Equal(t, exitFailure, r.code, "stderr: %s", r.stderr)
	out := lines(r.stdout)
	require.Len(t, out, 10, "one output line per input line: %q", r.stdout)

	opensrs, digicert, approve = out[0], out[6], out[9]
	for _, id := range []string{opensrs, digicert, approve} {
		require.Regexp(t, uuidRE, id)
	}
	require.Equal(t, opensrs, out[7], "a duplicate inside the batch prints the first ID")
	require.NotEqual(t, opensrs, digicert)
	require.NotEqual(t, opensrs, approve)

	wantErr := map[int]string{
		2: "line 2: invalid JSON",
		3: `line 3: provider: must be opensrs or digicert, got "sectigo"`,
		4: "line 4: order_id: must be 1-20 ASCII digits",
		5: `line 5: invalid JSON: json: unknown field "extra"`,
		6: "line 6: empty line",
		9: "line 9: locale:",
	}
	for n, want := range wantErr {
		require.True(t, strings.HasPrefix(out[n-1], want), "line %d: got %q, want prefix %q", n, out[n-1], want)
	}

	// stderr: the duplicate note and the failure summary, nothing else.
	errLines := lines(r.stderr)
	require.Len(t, errLines, 2, "stderr: %q", r.stderr)
	require.Regexp(t, `^line (1|8): duplicate of `+opensrs+`$`, errLines[0])
	require.Equal(t, "enqueue batch: 6 line(s) failed", errLines[1])

	// Exactly the three good lines were enqueued, as asked.
	require.Equal(t, 3, e.taskCount(t))
	info := e.task(t, opensrs)
	require.Equal(t, tasks.TypeOpenSRSResendCertEmail, info.Type)
	require.Equal(t, `{"order_id":"1799"}`, string(info.Payload))
	info = e.task(t, digicert)
	require.Equal(t, "digicert", info.Queue)
	require.Equal(t, tasks.TypeDigiCertResendEmails, info.Type)
	require.Equal(t, `{"order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en"}`, string(info.Payload))
	info = e.task(t, approve)
	require.Equal(t, "opensrs", info.Queue)
	require.Equal(t, tasks.TypeOpenSRSResendApproveEmail, info.Type)
	require.Equal(t, `{"order_id":"2000","reference":"R-2"}`, string(info.Payload))
	require.Equal(t, tasks.DefaultMaxRetry, info.MaxRetry)
	return opensrs, digicert, approve
}

func TestBatchMixed(t *testing.T) {
	t.Parallel()
	input, err := os.ReadFile(mixedFile)
	require.NoError(t, err)
	tests := []struct {
		name  string
		stdin string
		args  []string
	}{
		{"file", "", []string{"batch", mixedFile}},
		{"file, flags after", "", []string{"batch", mixedFile, "--concurrency", "4"}},
		{"stdin dash", string(input), []string{"batch", "-"}},
		{"stdin no arg", string(input), []string{"batch"}},
		{"sequential", string(input), []string{"batch", "--concurrency=1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				e := newEnv(t, b)
				checkMixed(t, e, e.runStdin(t, tc.stdin, tc.args...))
			})
		})
	}
	// Sequentially, the note must name the later line.
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		r := e.run(t, "batch", mixedFile, "--concurrency", "1")
		id, _, _ := checkMixed(t, e, r)
		require.Equal(t, "line 8: duplicate of "+id, lines(r.stderr)[0])
	})
}

func TestBatchAllGood(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		// CRLF, surrounding blanks and no final newline are all fine.
		in := "{\"provider\":\"opensrs\",\"order_id\":\"1\"}\r\n" +
			"\t{\"provider\":\"digicert\",\"order_id\":\"2\",\"reference\":\"r\"}  \n" +
			`{"provider":"digicert","order_id":"3","type":"digicert:resend_emails"}`
		r := e.runStdin(t, in, "batch", "--max-retry", "2", "--timeout", "2m", "--delay", "1h")
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		require.Empty(t, r.stderr)
		out := lines(r.stdout)
		require.Len(t, out, 3)
		for i, id := range out {
			info := e.task(t, id)
			require.Equal(t, 2, info.MaxRetry)
			require.Equal(t, 2*time.Minute, info.Timeout)
			require.Equal(t, asynq.TaskStateScheduled, info.State)
			require.WithinDuration(t, time.Now().Add(time.Hour), info.NextProcessAt, 3*time.Second)
			require.Contains(t, string(info.Payload), fmt.Sprintf(`"order_id":"%d"`, i+1))
		}
	})
}

func TestBatchEmptyInput(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		r := e.runStdin(t, "", "batch")
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Empty(t, r.stdout)
		require.Equal(t, 0, e.taskCount(t))
	})
}

func TestBatchLineErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line string
		want string
	}{
		{`{"provider":"opensrs"}`, "order_id: is required"},
		{`{"order_id":"1"}`, "provider: is required"},
		{`{"provider":"opensrs","order_id":1799}`, "invalid JSON"},
		{`{"provider":"opensrs","order_id":"1"} {"provider":"opensrs","order_id":"2"}`, "more than one value"},
		{`[1,2]`, "invalid JSON"},
		{`{"provider":"opensrs","order_id":"1","locale":"en"}`, "only for provider digicert"},
		{`{"provider":"opensrs","order_id":"1","type":"digicert:resend_emails"}`, "type:"},
		{`{"provider":"digicert","order_id":"1","type":"opensrs:resend_cert_email"}`, "type:"},
		{`{"provider":"digicert","order_id":"1","domain_approval_emails":[{"domain":"example.com"}]}`, "domain_approval_emails[0].email: is required"},
		{`{"provider":"digicert","order_id":"1","domain_approval_emails":[{"domain":"bad_domain","email":"a@example.com"}]}`, "domain_approval_emails[0].domain"},
		{`{"provider":"digicert","order_id":"1","domain_approval_emails":[{"domain":"example.com","email":"a@example.com","x":1}]}`, `unknown field "x"`},
		{`{"provider":"opensrs","order_id":"1","reference":"` + strings.Repeat("é", tasks.MaxReferenceLen+1) + `"}`, "reference: must be at most 128"},
		{`{"provider":"opensrs","order_id":"` + strings.Repeat("9", 21) + `"}`, "order_id: must be 1-20"},
		{`   `, "empty line"},
		{`{"provider":"digicert","order_id":"1","domain_approval_emails":[` + approvalJSON(101) + `]}`, "domain_approval_emails: must have at most 100 entries, got 101"},
		{`{"provider":"opensrs","order_id":"1","reference":"` + strings.Repeat(" ", 200<<10) + `"}`, "longer than 131072 bytes"},
	}
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		for _, tc := range tests {
			t.Run(tc.want, func(t *testing.T) {
				good := `{"provider":"opensrs","order_id":"42"}`
				r := e.runStdin(t, tc.line+"\n"+good+"\n", "batch", "--dedup-window", "0")
				require.Equal(t, exitFailure, r.code)
				out := lines(r.stdout)
				require.Len(t, out, 2, "%q", r.stdout)
				require.True(t, strings.HasPrefix(out[0], "line 1: "), out[0])
				require.Contains(t, out[0], tc.want)
				require.Regexp(t, uuidRE, out[1], "the good line is still enqueued")
				require.Equal(t, "enqueue batch: 1 line(s) failed\n", r.stderr)
			})
		}
	})
}

func TestBatchLarge(t *testing.T) {
	t.Parallel()
	const n = 2000
	var in strings.Builder
	for i := 1; i <= n; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&in, `{"provider":"digicert","order_id":"%d","locale":"en"}`+"\n", i)
		} else {
			fmt.Fprintf(&in, `{"provider":"opensrs","order_id":"%d"}`+"\n", i)
		}
	}
	// A file, to exercise the FILE path with a large input too.
	path := filepath.Join(t.TempDir(), "large.jsonl")
	require.NoError(t, os.WriteFile(path, []byte(in.String()), 0o600))

	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		start := time.Now()
		r := e.run(t, "batch", path)
		t.Logf("%d lines in %v", n, time.Since(start))
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		require.Empty(t, r.stderr)
		out := lines(r.stdout)
		require.Len(t, out, n)

		byID := map[string]*asynq.TaskInfo{}
		for _, q := range tasks.Queues {
			info, err := e.insp.GetQueueInfo(q)
			require.NoError(t, err)
			require.Equal(t, n/2, info.Pending, "queue %s", q)
			for page := 1; ; page++ {
				ts, err := e.insp.ListPendingTasks(q, asynq.PageSize(500), asynq.Page(page))
				require.NoError(t, err)
				if len(ts) == 0 {
					break
				}
				for _, ti := range ts {
					byID[ti.ID] = ti
				}
			}
		}
		require.Len(t, byID, n)
		for i, id := range out {
			ti, ok := byID[id]
			require.True(t, ok, "line %d: %q is not a pending task", i+1, id)
			orderID, _ := tasks.Meta(ti.Payload)
			require.Equal(t, strconv.Itoa(i+1), orderID, "output line %d is not the ID of input line %d", i+1, i+1)
		}
	})
}

func TestBatchDuplicates(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		// A request enqueued earlier by a single command.
		first := requireID(t, e.run(t, "opensrs", "--order-id", "5"))

		var in strings.Builder
		for i := range 100 {
			fmt.Fprintf(&in, `{"provider":"opensrs","order_id":"%d"}`+"\n", i%10) // each ID ten times
		}
		r := e.runStdin(t, in.String(), "batch")
		require.Equal(t, exitOK, r.code, r.stderr)
		out := lines(r.stdout)
		require.Len(t, out, 100)
		for i := 10; i < 100; i++ {
			require.Equal(t, out[i%10], out[i], "line %d", i+1)
		}
		require.Equal(t, first, out[5], "a duplicate of an earlier single enqueue")
		require.Len(t, lines(r.stderr), 91, "one note per duplicate line")
		require.Equal(t, 10, e.taskCount(t))

		// With the window off, every line is a task.
		r = e.runStdin(t, in.String(), "batch", "--dedup-window", "0")
		require.Equal(t, exitOK, r.code, r.stderr)
		require.Empty(t, r.stderr)
		seen := map[string]bool{}
		for _, id := range lines(r.stdout) {
			require.False(t, seen[id])
			seen[id] = true
		}
		require.Len(t, seen, 100)
		require.Equal(t, 110, e.taskCount(t))
	})
}

// BenchmarkBatch measures batch() on the real redis-server, sequentially and
// with 32 requests in flight.
//
//	go test -run='^$' -bench=BenchmarkBatch -benchtime=2000x ./cmd/enqueue
func BenchmarkBatch(b *testing.B) {
	var seq atomic.Int64
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			be := redistest.Real(b) // skips when there is no real redis-server
			rdb := be.Client(b)
			enq := tasks.NewEnqueuer(rdb)
			b.Cleanup(func() { _ = enq.Close() })

			var in strings.Builder
			for range b.N {
				id := seq.Add(1)
				if id%2 == 0 {
					fmt.Fprintf(&in, `{"provider":"digicert","order_id":"%d","locale":"en"}`+"\n", id)
				} else {
					fmt.Fprintf(&in, `{"provider":"opensrs","order_id":"%d"}`+"\n", id)
				}
			}
			input := in.String()
			emitted := 0
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			failed, err := batch(ctx, enq, tasks.DefaultOptions(), strings.NewReader(input), conc, func(lineResult) { emitted++ }, nil)
			elapsed := time.Since(start)
			b.StopTimer()
			if err != nil || failed != 0 || emitted != b.N {
				b.Fatalf("batch: err=%v failed=%d emitted=%d of %d", err, failed, emitted, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tasks/s")
		})
	}
}

// approvalJSON returns n distinct domain_approval_emails entries.
func approvalJSON(n int) string {
	var entries []string
	for i := range n {
		entries = append(entries, fmt.Sprintf(`{"domain":"d%d.example.com","email":"admin@d%d.example.com"}`, i, i))
	}
	return strings.Join(entries, ",")
}

// TestBatchLongLine: a runaway line is rejected by number, the lines around
// it are enqueued, and a line just under the limit is still read whole.
func TestBatchLongLine(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		padded := `{"provider":"opensrs","order_id":"3"}` + strings.Repeat(" ", maxLineBytes-len(`{"provider":"opensrs","order_id":"3"}`))
		in := `{"provider":"opensrs","order_id":"1"}` + "\n" +
			`{"provider":"opensrs","order_id":"2","reference":"` + strings.Repeat("x", 13<<20) + `"}` + "\n" +
			padded + "\r\n" +
			`{"provider":"opensrs","order_id":"4"}`
		r := e.runStdin(t, in, "batch")
		require.Equal(t, exitFailure, r.code)
		out := lines(r.stdout)
		require.Len(t, out, 4)
		require.Regexp(t, uuidRE, out[0])
		require.Equal(t, fmt.Sprintf("line 2: longer than 131072 bytes (%d): one task a line", 13<<20+len(`{"provider":"opensrs","order_id":"2","reference":""}`)+1), out[1])
		require.Regexp(t, uuidRE, out[2], "a line of exactly the limit is read")
		require.Regexp(t, uuidRE, out[3])
		require.Equal(t, 3, e.taskCount(t))
	})
}

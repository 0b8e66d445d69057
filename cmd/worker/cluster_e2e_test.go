package main

import (
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/testbin"
)

// TestClusterEndToEnd: the built binaries on a 3-master Redis Cluster
// through a redis-cluster:// URL. `enqueue` (single, batch, and the same
// request twice: a duplicate), two worker processes against the provider
// simulators with every 10th order failing for good (dead-lettered with its
// reason), DIGICERT_RATE_LIMIT respected across both workers, `enqueue
// status` of a completed task, `dlq list` (table and --json), `dlq show`,
// `dlq replay` of one letter (the new task completes) and `dlq delete` of
// another, the dashboard's API and /metrics answering 200 — and no
// CROSSSLOT, MOVED, ASK or TRYAGAIN in any process's log or output.
func TestClusterEndToEnd(t *testing.T) {
	t.Parallel()
	c := redistest.NewCluster(t)
	url := "redis-cluster://" + strings.Join(c.Addrs, ",")
	wbin := testbin.Build(t, "cmd/worker")
	ebin := testbin.Build(t, "cmd/enqueue")
	dbin := testbin.Build(t, "cmd/dlq")
	rdb, err := redisconn.Connect(t.Context(), url, 5*time.Second)
	require.NoError(t, err)
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	const user, okey, dkey = "clusterreseller", "0123456789abcdef0123456789abcdef", "cluster-digicert-key"
	osim := opensrstest.NewServer(user, okey)
	defer osim.Close()
	dsim := digicerttest.NewServer(dkey)
	defer dsim.Close()
	osim.SetDefault(opensrstest.Behavior{Delay: 20 * time.Millisecond})
	dsim.SetDefault(digicerttest.Behavior{Delay: 20 * time.Millisecond})

	var outputs []string // everything every process printed
	run := func(bin, stdin string, args ...string) (int, string, string) {
		code, stdout, stderr := runBin(t, bin, stdin, append(args, "--redis-url", url)...)
		outputs = append(outputs, stdout, stderr)
		return code, stdout, stderr
	}

	// Single enqueue, and the same request again: a duplicate of the first.
	code, single, stderr := run(ebin, "", "opensrs", "--order-id", "90001")
	require.Equal(t, 0, code, stderr)
	single = strings.TrimSpace(single)
	require.NotEmpty(t, single)
	code, again, stderr := run(ebin, "", "opensrs", "--order-id", "90001")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, single, strings.TrimSpace(again))
	require.Contains(t, stderr, "duplicate of "+single)

	// A batch: 30 OpenSRS and 30 DigiCert tasks, every 10th order failing for good.
	type task struct{ id, queue, order string }
	var lines strings.Builder
	var batch []task
	dead := map[string]bool{}
	for i := range 60 {
		o := strconv.Itoa(91000 + i)
		p := "opensrs"
		if i%2 == 1 {
			p = "digicert"
		}
		if i%10 == 0 || i%10 == 1 {
			dead[o] = true
			if p == "opensrs" {
				osim.SetBehavior(o, opensrstest.Behavior{ErrorCode: 480, ErrorText: "e2e: item not found"})
			} else {
				dsim.SetBehavior(o, digicerttest.Behavior{ErrorStatus: http.StatusNotFound, ErrorCode: "not_found|order", ErrorMessage: "e2e: order not found"})
			}
		}
		batch = append(batch, task{queue: p, order: o})
		lines.WriteString(`{"provider":"` + p + `","order_id":"` + o + `"}` + "\n")
	}
	code, stdout, stderr := run(ebin, lines.String(), "batch")
	require.Equal(t, 0, code, stderr)
	ids := strings.Fields(stdout)
	require.Len(t, ids, len(batch))
	for i := range batch {
		batch[i].id = ids[i]
	}
	batch = append(batch, task{id: single, queue: "opensrs", order: "90001"})

	const rateN, ratePeriod = 8, 2 * time.Second
	env := []string{
		"REDIS_URL=" + url, "HTTP_ADDR=127.0.0.1:0", "RECONCILE_INTERVAL=2s",
		"OPENSRS_USERNAME=" + user, "OPENSRS_API_KEY=" + okey, "OPENSRS_URL=" + osim.URL(),
		"DIGICERT_API_KEY=" + dkey, "DIGICERT_URL=" + dsim.URL(),
		"DIGICERT_RATE_LIMIT=" + strconv.Itoa(rateN) + "/" + ratePeriod.String(),
		"RETRY_BASE=1s", "RETRY_MAX=2s", "RATE_LIMIT_WAIT=1s",
		"DASHBOARD_USER=ops", "DASHBOARD_PASSWORD=dashboard-pw",
	}
	workers := []*capWorker{startCapWorker(t, wbin, env...), startCapWorker(t, wbin, env...)}
	t.Cleanup(func() {
		if t.Failed() {
			for i, w := range workers {
				lines := strings.Split(w.stderr.String(), "\n")
				t.Logf("worker %d, last log lines:\n%s", i, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	})
	m := httpAddrRE.FindStringSubmatch(workers[0].stderr.String())
	require.NotNil(t, m, "no http_addr in %s", workers[0].stderr)
	base := "http://" + m[1]

	start := time.Now()
	archived := map[string]task{}
	deadline := time.Now().Add(90 * time.Second)
	for _, tk := range batch {
		for {
			info, err := insp.GetTaskInfo(tk.queue, tk.id)
			require.NoError(t, err, "task %s (order %s) lost", tk.id, tk.order)
			if info.State == asynq.TaskStateCompleted {
				require.False(t, dead[tk.order], "task %s of a failing order completed", tk.id)
				break
			}
			if info.State == asynq.TaskStateArchived {
				require.True(t, dead[tk.order], "task %s of order %s dead: %s", tk.id, tk.order, info.LastErr)
				archived[tk.id] = tk
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s", tk.id, info.State)
			time.Sleep(50 * time.Millisecond)
		}
	}
	require.Len(t, archived, len(dead))
	t.Logf("%d tasks done on the cluster in %s", len(batch), time.Since(start).Round(time.Millisecond))

	// DIGICERT_RATE_LIMIT: at most rateN requests in any window of
	// ratePeriod, less a margin for the time between the limiter's grant
	// and the simulator's receipt.
	var at []time.Time
	for _, r := range dsim.Requests() {
		at = append(at, r.Time)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	require.GreaterOrEqual(t, len(at), 30, "one request per DigiCert task at least")
	for i := range at {
		j := i
		for j < len(at) && at[j].Sub(at[i]) < ratePeriod-200*time.Millisecond {
			j++
		}
		require.LessOrEqual(t, j-i, rateN, "DigiCert requests from %s", at[i].Format(time.StampMilli))
	}

	// enqueue status of a completed task.
	code, stdout, stderr = run(ebin, "", "status", single, "--json")
	require.Equal(t, 0, code, stderr)
	var st struct {
		State string `json:"state"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &st))
	require.Equal(t, "completed", st.State)

	// dlq list, table and JSON; every letter has its reason.
	code, stdout, stderr = run(dbin, "", "list")
	require.Equal(t, 0, code, stderr)
	for id := range archived {
		require.Contains(t, stdout, id)
	}
	var dls []struct {
		ID        string `json:"id"`
		Queue     string `json:"queue"`
		LastError string `json:"last_error"`
	}
	require.Eventually(t, func() bool {
		code, stdout, _ := run(dbin, "", "list", "--json")
		return code == 0 && json.Unmarshal([]byte(stdout), &dls) == nil && len(dls) == len(archived)
	}, 30*time.Second, 500*time.Millisecond, "dlq list --json")
	for _, d := range dls {
		require.Contains(t, archived, d.ID)
		require.NotEmpty(t, d.LastError, "dead letter %s has no reason", d.ID)
	}
	var replayed, deleted task
	for _, tk := range archived {
		if tk.queue == "digicert" && replayed.id == "" {
			replayed = tk
		} else if tk.queue == "opensrs" && deleted.id == "" {
			deleted = tk
		}
	}
	require.NotEmpty(t, replayed.id)
	require.NotEmpty(t, deleted.id)

	code, stdout, stderr = run(dbin, "", "show", replayed.id)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, replayed.id)
	require.Contains(t, stdout, replayed.order)

	// Replay one (its order now succeeds): the new task completes.
	dsim.SetBehavior(replayed.order, digicerttest.Behavior{})
	code, stdout, stderr = run(dbin, "", "replay", replayed.id)
	require.Equal(t, 0, code, stderr)
	f := strings.Fields(stdout)
	require.Len(t, f, 2, stdout)
	require.Equal(t, replayed.id, f[0])
	newID := f[1]
	require.Eventually(t, func() bool {
		info, err := insp.GetTaskInfo(replayed.queue, newID)
		return err == nil && info.State == asynq.TaskStateCompleted
	}, 30*time.Second, 50*time.Millisecond, "replayed task %s not completed", newID)

	// Delete another.
	code, stdout, stderr = run(dbin, "", "delete", deleted.id)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, deleted.id)
	_, err = insp.GetTaskInfo(deleted.queue, deleted.id)
	require.Error(t, err, "deleted letter's task still there")
	code, stdout, stderr = run(dbin, "", "list", "--json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(stdout), &dls))
	require.Len(t, dls, len(archived)-2)

	// The dashboard's API and /metrics.
	get := func(path string, auth bool) (int, string) {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		require.NoError(t, err)
		if auth {
			req.SetBasicAuth("ops", "dashboard-pw")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		outputs = append(outputs, string(b))
		return resp.StatusCode, string(b)
	}
	code, body := get("/dashboard/api/queues", true)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `"queue":"opensrs"`)
	require.Contains(t, body, `"queue":"digicert"`)
	code, body = get("/metrics", false)
	require.Equal(t, http.StatusOK, code, body)

	for i, w := range workers {
		select {
		case <-w.exited:
			t.Fatalf("worker %d exited: %s", i, w.stderr)
		default:
		}
		outputs = append(outputs, w.stderr.String(), w.cmd.Stdout.(*syncBuffer).String())
	}
	for _, out := range outputs {
		for _, bad := range []string{"CROSSSLOT", "MOVED", "ASK ", "TRYAGAIN"} {
			require.NotContains(t, out, bad)
		}
	}
}

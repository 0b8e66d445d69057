package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/testbin"
)

// runBin runs a built CLI with only PATH and HOME in its environment and
// returns its exit code, stdout and stderr.
func runBin(t *testing.T, bin, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	require.NoError(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish: %s", bin, args, stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

var httpAddrRE = regexp.MustCompile(`"http_addr":"([^"]+)"`)

// readyPoller polls /readyz every 50 ms and records what it saw, in order.
type readyPoller struct {
	mu   sync.Mutex
	seen []readySample
	stop chan struct{}
	done chan struct{}
}

type readySample struct {
	at   time.Time
	code int // 0 when the request failed
}

func pollReady(url string) *readyPoller {
	p := &readyPoller{stop: make(chan struct{}), done: make(chan struct{})}
	c := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(p.done)
		for {
			code := 0
			if resp, err := c.Get(url); err == nil {
				code = resp.StatusCode
				_ = resp.Body.Close()
			}
			p.mu.Lock()
			p.seen = append(p.seen, readySample{time.Now(), code})
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return p
}

func (p *readyPoller) samples() []readySample {
	close(p.stop)
	<-p.done
	return p.seen
}

// TestSentinelFailover: a primary, a replica and three Sentinels; 300
// OpenSRS tasks (every 25th fails for good) enqueued by the enqueue binary
// through the sentinel URL and replicated; two worker processes on the
// sentinel URL. The primary is SIGKILLed after a third of the calls: the
// replica is promoted, the workers call the provider again within a minute
// of the promotion, /readyz says 503 during the gap and 200 after, every
// task ends completed or dead-lettered with its reason (none lost),
// duplicate provider calls are at most the tasks active at the kill, the
// dashboard's API answers, and `dlq list` / `enqueue status` work through
// the sentinel URL. Then the old
// primary comes back as a replica (the READONLY trap of asynq#959): 50 more
// tasks are enqueued and completed, written to the new primary, and no
// READONLY error reaches any log or output.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	url := s.URL(2)
	wbin := testbin.Build(t, "cmd/worker")
	ebin := testbin.Build(t, "cmd/enqueue")
	dbin := testbin.Build(t, "cmd/dlq")
	ctx := t.Context()
	rdb, err := redisconn.Connect(ctx, url, 5*time.Second)
	require.NoError(t, err)
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	const user, key = "sentinelreseller", "0123456789abcdef0123456789abcdef"
	sim := opensrstest.NewServer(user, key)
	defer sim.Close()
	const delay = 200 * time.Millisecond
	sim.SetDefault(opensrstest.Behavior{Delay: delay})

	var outputs []string // everything the binaries printed, searched for READONLY
	enqueue := func(from, n int) (ids []string, orders map[string]string, dead map[string]bool) {
		var lines strings.Builder
		orders, dead = map[string]string{}, map[string]bool{}
		var list []string
		for i := range n {
			o := strconv.Itoa(from + i)
			if i%25 == 0 {
				sim.SetBehavior(o, opensrstest.Behavior{Delay: delay, ErrorCode: 480})
				dead[o] = true
			}
			list = append(list, o)
			lines.WriteString(`{"provider":"opensrs","order_id":"` + o + `"}` + "\n")
		}
		code, stdout, stderr := runBin(t, ebin, lines.String(), "batch", "--redis-url", url)
		outputs = append(outputs, stdout, stderr)
		require.Equal(t, 0, code, stderr)
		ids = strings.Fields(stdout)
		require.Len(t, ids, n)
		for i, id := range ids {
			orders[id] = list[i]
		}
		return ids, orders, dead
	}
	const n = 300
	ids, orders, deadOrders := enqueue(70_000, n)
	s.WaitReplicated(10 * time.Second)

	env := []string{
		"REDIS_URL=" + url, "HTTP_ADDR=127.0.0.1:0", "RECONCILE_INTERVAL=2s",
		"OPENSRS_USERNAME=" + user, "OPENSRS_API_KEY=" + key, "OPENSRS_URL=" + sim.URL(),
		"OPENSRS_CONCURRENCY=5", "RETRY_BASE=1s", "RETRY_MAX=2s",
		// PROVIDER_TIMEOUT stays at its default (90 s): before failed
		// in-flight releases were retried, the slots held at the kill stayed
		// taken for their whole lease (100 s) and no OpenSRS call went out
		// within a minute of the promotion.
		"DASHBOARD_USER=ops", "DASHBOARD_PASSWORD=dashboard-pw",
	}
	workers := []*capWorker{startCapWorker(t, wbin, env...), startCapWorker(t, wbin, env...)}
	m := httpAddrRE.FindStringSubmatch(workers[0].stderr.String())
	require.NotNil(t, m, "no http_addr in %s", workers[0].stderr)
	readyURL := "http://" + m[1] + "/readyz"
	t.Cleanup(func() {
		if t.Failed() {
			for i, w := range workers {
				lines := strings.Split(w.stderr.String(), "\n")
				t.Logf("worker %d, last log lines:\n%s", i, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	})

	require.Eventually(t, func() bool { return len(sim.Requests()) >= n/3 }, 2*time.Minute, 20*time.Millisecond)
	qi, err := insp.GetQueueInfo("opensrs")
	require.NoError(t, err)
	inFlight := max(qi.Active, sim.Load().Now)
	poll := pollReady(readyURL)
	old := s.KillPrimary()
	killedAt := time.Now()
	promoted := s.WaitPromotion(old, time.Minute)
	promotedAt := time.Now()
	t.Logf("primary %s killed with %d tasks active; %s promoted after %s", old, inFlight, promoted, promotedAt.Sub(killedAt).Round(time.Millisecond))

	// Calls start again within a minute of the promotion.
	require.Eventually(t, func() bool {
		reqs := sim.Requests()
		return len(reqs) > 0 && reqs[len(reqs)-1].Time.After(promotedAt)
	}, time.Minute, 50*time.Millisecond, "no provider call after the promotion")
	resumed := time.Now()
	t.Logf("provider called again %s after the promotion", resumed.Sub(promotedAt).Round(time.Millisecond))

	// /readyz: unready in the gap, ready again after it.
	require.Eventually(t, func() bool {
		resp, err := http.Get(readyURL)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, time.Minute, 100*time.Millisecond, "/readyz not ready after the promotion")
	samples := poll.samples()
	var unready, readyAfter bool
	for _, sm := range samples {
		if sm.code == http.StatusServiceUnavailable {
			unready = true
		}
		if unready && sm.code == http.StatusOK {
			readyAfter = true
		}
	}
	require.True(t, unready, "/readyz never said 503 during the gap (%d samples)", len(samples))
	require.True(t, readyAfter, "/readyz did not say 200 after the gap")

	// The dashboard (asynqmon, on asynq's failover option) reads the new primary.
	req, err := http.NewRequest(http.MethodGet, "http://"+m[1]+"/dashboard/api/queues", nil)
	require.NoError(t, err)
	req.SetBasicAuth("ops", "dashboard-pw")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body := new(bytes.Buffer)
	_, _ = body.ReadFrom(resp.Body)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, body.String())
	require.Contains(t, body.String(), `"queue":"opensrs"`)

	// Every task ends completed or archived; none is lost.
	deadline := time.Now().Add(3 * time.Minute)
	archived := map[string]bool{}
	for _, id := range ids {
		for {
			info, err := insp.GetTaskInfo("opensrs", id)
			require.NoError(t, err, "task %s (order %s) lost", id, orders[id])
			if info.State == asynq.TaskStateCompleted {
				require.False(t, deadOrders[orders[id]], "task %s of a failing order completed", id)
				break
			}
			if info.State == asynq.TaskStateArchived {
				archived[id] = true
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s", id, info.State)
			time.Sleep(50 * time.Millisecond)
		}
	}
	require.Len(t, archived, len(deadOrders))

	// Duplicate provider calls: at most one per task active at the kill.
	dups := 0
	for _, o := range orders {
		dups += max(0, sim.Count(o)-1)
	}
	t.Logf("duplicate provider calls: %d (tasks active at the kill: %d)", dups, inFlight)
	require.LessOrEqual(t, dups, inFlight)

	// The CLIs through the sentinel URL: every dead letter has its reason.
	var dls []struct {
		ID        string `json:"id"`
		LastError string `json:"last_error"`
	}
	require.Eventually(t, func() bool {
		code, stdout, stderr := runBin(t, dbin, "", "list", "--json", "--redis-url", url)
		outputs = append(outputs, stdout, stderr)
		return code == 0 && json.Unmarshal([]byte(stdout), &dls) == nil && len(dls) == len(archived)
	}, time.Minute, 500*time.Millisecond, "dlq list through the sentinel URL")
	for _, d := range dls {
		require.True(t, archived[d.ID], "unexpected dead letter %s", d.ID)
		require.NotEmpty(t, d.LastError, "dead letter %s has no reason", d.ID)
	}
	code, stdout, stderr := runBin(t, ebin, "", "status", ids[1], "--json", "--redis-url", url)
	outputs = append(outputs, stdout, stderr)
	require.Equal(t, 0, code, stderr)
	var st struct {
		State string `json:"state"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &st))
	require.Equal(t, "completed", st.State)

	// The READONLY trap: the old primary back, as a replica.
	back := s.RestartKilled(time.Minute)
	require.Equal(t, old, back)
	more, _, moreDead := enqueue(80_000, 50)
	newPrimary := redis.NewClient(&redis.Options{Addr: promoted, DB: 2})
	defer newPrimary.Close()
	onNew := asynq.NewInspectorFromRedisClient(newPrimary)
	defer onNew.Close()
	deadline = time.Now().Add(2 * time.Minute)
	for _, id := range more {
		for {
			info, err := onNew.GetTaskInfo("opensrs", id)
			require.NoError(t, err, "task %s not on the new primary %s", id, promoted)
			if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s", id, info.State)
			time.Sleep(50 * time.Millisecond)
		}
	}
	require.Len(t, moreDead, 2)
	require.Equal(t, "master", redisRole(t, promoted))
	require.Equal(t, "slave", redisRole(t, back))

	for i, w := range workers {
		outputs = append(outputs, w.stderr.String())
		select {
		case <-w.exited:
			t.Fatalf("worker %d exited: %s", i, w.stderr)
		default:
		}
	}
	for _, out := range outputs {
		require.NotContains(t, out, "READONLY")
	}
}

func redisRole(t *testing.T, addr string) string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	r, err := c.Do(t.Context(), "ROLE").Slice()
	require.NoError(t, err)
	return r[0].(string)
}

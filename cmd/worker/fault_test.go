package main

// Fault injection against the built worker binary and a real Redis: Redis
// killed and restarted on its AOF file, provider chaos, SIGTERM under load,
// foreign bad tasks. Each counts every task it enqueued at the end: none may
// be lost, none left active.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

const (
	faultUser = "faultreseller"
	faultOKey = "fedcba9876543210fedcba9876543210"
	faultDKey = "fault-digicert-key"
)

// faultTask is one task a fault test enqueued.
type faultTask struct {
	id, queue, order string
}

// faultSims are the provider simulators of a fault test.
type faultSims struct {
	o *opensrstest.Server
	d *digicerttest.Server
}

func newFaultSims(t *testing.T) *faultSims {
	s := &faultSims{o: opensrstest.NewServer(faultUser, faultOKey), d: digicerttest.NewServer(faultDKey)}
	t.Cleanup(func() { s.o.Close(); s.d.Close() })
	return s
}

// env is a production-like worker configuration against the simulators,
// with fast retries and the protections that would only slow the test down
// off (each has its own process test).
func (s *faultSims) env(redisURL string, extra ...string) []string {
	return append([]string{
		"REDIS_URL=" + redisURL, "HTTP_ADDR=off",
		"OPENSRS_USERNAME=" + faultUser, "OPENSRS_API_KEY=" + faultOKey, "OPENSRS_URL=" + s.o.URL(),
		"DIGICERT_API_KEY=" + faultDKey, "DIGICERT_URL=" + s.d.URL(),
		"DIGICERT_RATE_LIMIT=off", "OPENSRS_MAX_IN_FLIGHT=0", "OUTAGE_THRESHOLD=off",
		"RETRY_BASE=1s", "RETRY_MAX=2s", "RATE_LIMIT_WAIT=1s", "RECONCILE_INTERVAL=2s",
	}, extra...)
}

// enqueueFault enqueues n tasks, alternately OpenSRS and DigiCert, for
// orders from, from+1, ….
func enqueueFault(t *testing.T, c redis.UniversalClient, from, n, maxRetry int) []faultTask {
	t.Helper()
	enq := tasks.NewEnqueuer(c)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow, opts.MaxRetry = 0, maxRetry
	out := make([]faultTask, 0, n)
	for i := range n {
		order := strconv.Itoa(from + i)
		var p tasks.Payload = tasks.NewOpenSRSPayload(order, "fault", false)
		if i%2 == 1 {
			p = &tasks.DigiCertPayload{OrderID: order, Locale: "en"}
		}
		res, err := enq.Enqueue(t.Context(), p, opts)
		require.NoError(t, err)
		out = append(out, faultTask{id: res.ID, queue: string(p.Provider()), order: order})
	}
	return out
}

// waitSettled waits until every task is completed or archived and returns
// their infos; a task asynq no longer knows is lost and fails the test.
func waitSettled(t *testing.T, insp *asynq.Inspector, all []faultTask, within time.Duration) map[string]*asynq.TaskInfo {
	t.Helper()
	infos := map[string]*asynq.TaskInfo{}
	deadline := time.Now().Add(within)
	for {
		var open []string
		for _, tk := range all {
			if _, ok := infos[tk.id]; ok {
				continue
			}
			info, err := insp.GetTaskInfo(tk.queue, tk.id)
			if errors.Is(err, asynq.ErrTaskNotFound) {
				require.FailNow(t, "task lost", "task %s (order %s) is gone", tk.id, tk.order)
			}
			if err != nil { // Redis briefly away: look again
				open = append(open, tk.id+" (unreadable)")
				continue
			}
			switch info.State {
			case asynq.TaskStateCompleted, asynq.TaskStateArchived:
				infos[tk.id] = info
			default:
				open = append(open, fmt.Sprintf("%s %s", tk.id, info.State))
			}
		}
		if len(open) == 0 {
			return infos
		}
		if time.Now().After(deadline) {
			require.FailNow(t, "tasks not settled", "%d tasks still open after %s, e.g. %v", len(open), within, open[:min(5, len(open))])
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// requireNoneActive checks that asynq holds no task active in either queue.
func requireNoneActive(t *testing.T, insp *asynq.Inspector) {
	t.Helper()
	for _, q := range tasks.Queues {
		info, err := insp.GetQueueInfo(q)
		if errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		require.NoError(t, err)
		require.Zero(t, info.Active, "queue %s has active tasks", q)
	}
}

// requireDeadLettered checks that an archived task has its dead letter.
func requireDeadLettered(t *testing.T, store *outcome.Store, id string) *outcome.DeadLetter {
	t.Helper()
	var d *outcome.DeadLetter
	require.Eventually(t, func() bool {
		dl, ok, err := store.DeadLetter(t.Context(), id)
		if err != nil || !ok {
			return false
		}
		d = &dl
		return true
	}, 20*time.Second, 100*time.Millisecond, "archived task %s has no dead letter", id)
	return d
}

// successes counts the provider's success answers per order and fails if a
// request for an order came after its success: no resend after a success.
func successes(t *testing.T, s *faultSims) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, q := range s.o.Requests() {
		if n[q.OrderID] > 0 {
			require.Failf(t, "resent after a success", "OpenSRS order %s requested again at %s", q.OrderID, q.Time)
		}
		if q.Outcome.Success {
			n[q.OrderID]++
		}
	}
	for _, q := range s.d.Requests() {
		if n[q.OrderID] > 0 {
			require.Failf(t, "resent after a success", "DigiCert order %s requested again at %s", q.OrderID, q.Time)
		}
		if q.Status == http.StatusNoContent {
			n[q.OrderID]++
		}
	}
	return n
}

// freeAddr is a loopback address for the worker's HTTP server, known
// before the worker starts (readyz is polled through the Redis outage).
func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := redistest.FreePort()
	require.NoError(t, err)
	return "127.0.0.1:" + strconv.Itoa(p)
}

func readyz(addr string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestFaultRedisKilledAndRestarted: Redis is SIGKILLed while a worker
// process runs a few hundred tasks and started again on the same AOF file
// (appendfsync always). /readyz answers 503 during the gap and 200 after,
// the worker reconnects by itself, and every task ends completed or dead
// lettered: none lost, none left active.
func TestFaultRedisKilledAndRestarted(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Own(t, "--appendonly", "yes", "--appendfsync", "always")
	if err != nil { // only REDIS_URL: a proxy that cuts and refuses connections
		srv = redistest.Restartable(t)
	}
	bin := testbin.Build(t, "cmd/worker")
	c := srv.Client(t)
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	sims := newFaultSims(t)
	sims.o.SetDefault(opensrstest.Behavior{Delay: 20 * time.Millisecond})
	sims.d.SetDefault(digicerttest.Behavior{Delay: 20 * time.Millisecond})

	all := enqueueFault(t, c, 700_000, 300, 5)
	addr := freeAddr(t)
	w := startCapWorker(t, bin, sims.env(srv.URL(), "HTTP_ADDR="+addr, "WORKER_CONCURRENCY=5")...)
	require.Eventually(t, func() bool { return readyz(addr) == http.StatusOK }, 10*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return len(sims.o.Requests())+len(sims.d.Requests()) >= 40 },
		30*time.Second, 10*time.Millisecond, "the worker never got going: %s", w.stderr)

	srv.Stop() // SIGKILL
	require.Eventually(t, func() bool { return readyz(addr) == http.StatusServiceUnavailable }, 10*time.Second, 50*time.Millisecond,
		"/readyz did not turn unready with Redis gone")
	time.Sleep(2 * time.Second)
	srv.Start()
	require.Eventually(t, func() bool { return readyz(addr) == http.StatusOK }, 30*time.Second, 100*time.Millisecond,
		"/readyz did not come back with Redis: %s", w.stderr)

	// Tasks active when Redis died are acked once it is back, or recovered
	// by asynq after their lease (30 s) at its next recoverer pass (1 min).
	infos := waitSettled(t, insp, all, 150*time.Second)
	store := outcome.NewStore(c, 0)
	completed := 0
	for _, tk := range all {
		if infos[tk.id].State == asynq.TaskStateCompleted {
			completed++
			continue
		}
		requireDeadLettered(t, store, tk.id)
	}
	t.Logf("%d of %d completed, the rest dead-lettered", completed, len(all))
	requireNoneActive(t, insp)
	successes(t, sims)
	code, _ := w.terminate(t)
	require.Equal(t, exitOK, code)
}

// chaosKind is what the simulators do to one order in the chaos test.
type chaosKind int

const (
	chaosNone      chaosKind = iota
	chaos5xx                 // 1-2 transient failures (HTTP 503)
	chaosHang                // the first request hangs past PROVIDER_TIMEOUT
	chaosReset               // the first request's connection is reset after it arrived
	chaos429                 // a burst of 1-3 rate limits
	chaosMixed               // a reset, a hang, then a 503
	chaosPermanent           // the provider refuses for good
	chaosExhaust             // 503 past the retry budget
)

// TestFaultProviderChaos: with the providers failing 30 % of orders with
// 5xx, hanging 10 % past the timeout, resetting connections and answering
// bursts of rate limits, every task ends completed or dead-lettered with
// the provider's own words; none is lost or left active, and no order is
// sent again after the provider accepted it.
func TestFaultProviderChaos(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	c := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	sims := newFaultSims(t)

	const n, from = 200, 800_000
	rng := rand.New(rand.NewPCG(11, 2026))
	kinds := map[string]chaosKind{}
	for i := range n {
		order := strconv.Itoa(from + i)
		r := rng.Float64()
		var k chaosKind
		switch {
		case r < 0.30:
			k = chaos5xx
		case r < 0.40:
			k = chaosHang
		case r < 0.48:
			k = chaosReset
		case r < 0.60:
			k = chaos429
		case r < 0.65:
			k = chaosMixed
		case r < 0.70:
			k = chaosPermanent
		case r < 0.75:
			k = chaosExhaust
		}
		kinds[order] = k
		ob, db := opensrstest.Behavior{}, digicerttest.Behavior{}
		switch k {
		case chaos5xx:
			ob.TransientFailures, db.TransientFailures = 1+i%2, 1+i%2
		case chaosHang:
			ob.Hangs, db.Hangs = 1, 1
		case chaosReset:
			ob.Resets, db.Resets = 1, 1
		case chaos429:
			ob.RateLimited, db.RateLimited, db.RetryAfter = 1+i%3, 1+i%3, time.Second
		case chaosMixed:
			ob.Resets, ob.Hangs, ob.TransientFailures = 1, 1, 1
			db.Resets, db.Hangs, db.TransientFailures = 1, 1, 1
		case chaosPermanent:
			ob.ErrorCode, ob.ErrorText = 480, "chaos: item not found"
			db.ErrorStatus, db.ErrorCode, db.ErrorMessage = http.StatusNotFound, "not_found|order", "chaos: order not found"
		case chaosExhaust:
			ob.TransientFailures, db.TransientFailures = 100, 100
		}
		sims.o.SetBehavior(order, ob)
		sims.d.SetBehavior(order, db)
	}

	all := enqueueFault(t, c, from, n, 4)
	w := startCapWorker(t, bin, sims.env(b.URL, "PROVIDER_TIMEOUT=2s", "WORKER_CONCURRENCY=10")...)
	infos := waitSettled(t, insp, all, 150*time.Second)

	store := outcome.NewStore(c, 0)
	sent := successes(t, sims)
	counts := map[string]int{}
	for _, tk := range all {
		info, k := infos[tk.id], kinds[tk.order]
		switch k {
		case chaosPermanent, chaosExhaust:
			require.Equal(t, asynq.TaskStateArchived, info.State, "order %s (%d)", tk.order, k)
			d := requireDeadLettered(t, store, tk.id)
			want := map[bool]string{true: "503", false: "chaos: "}[k == chaosExhaust]
			require.Contains(t, d.LastError, want, "order %s: the dead letter keeps the provider's words", tk.order)
			require.Zero(t, sent[tk.order], "order %s", tk.order)
			counts["dead"]++
		default:
			require.Equal(t, asynq.TaskStateCompleted, info.State, "order %s (%d): %s", tk.order, k, info.LastErr)
			require.Equal(t, 1, sent[tk.order], "order %s accepted once", tk.order)
			counts["completed"]++
		}
	}
	t.Logf("chaos outcome: %v", counts)
	requireNoneActive(t, insp)
	code, _ := w.terminate(t)
	require.Equal(t, exitOK, code)
}

// TestFaultSIGTERMUnderLoad: a worker process stopped with SIGTERM while
// it runs a few hundred tasks (some hanging at the provider) exits within
// SHUTDOWN_TIMEOUT plus its drain margins; nothing is left active, every
// unfinished task is back to pending with its retry budget intact, and a
// second worker completes them all, none sent twice.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	c := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	sims := newFaultSims(t)
	sims.o.SetDefault(opensrstest.Behavior{Delay: 200 * time.Millisecond})
	sims.d.SetDefault(digicerttest.Behavior{Delay: 200 * time.Millisecond})

	const n, from = 300, 900_000
	for i := 0; i < n; i += 10 { // one order in ten hangs through the shutdown
		sims.o.SetBehavior(strconv.Itoa(from+i), opensrstest.Behavior{Hangs: 1})
		sims.d.SetBehavior(strconv.Itoa(from+i+1), digicerttest.Behavior{Hangs: 1})
	}
	all := enqueueFault(t, c, from, n, 3)
	const shutdown = 2 * time.Second
	w := startCapWorker(t, bin, sims.env(b.URL, "WORKER_CONCURRENCY=10", "SHUTDOWN_TIMEOUT="+shutdown.String())...)
	require.Eventually(t, func() bool { return len(sims.o.Requests())+len(sims.d.Requests()) >= 60 },
		60*time.Second, 10*time.Millisecond, "the worker never got going: %s", w.stderr)

	code, took := w.terminate(t)
	t.Logf("worker exited %d, %s after SIGTERM", code, took)
	require.Equal(t, exitOK, code, w.stderr.String())
	// SHUTDOWN_TIMEOUT, then at most the drain of interrupted attempts
	// (handlerDrainTimeout) and the HTTP server's 5 s, which it does not use
	// here: a few seconds at most in practice.
	require.Less(t, took, shutdown+handlerDrainTimeout, "exit took too long")
	requireNoneActive(t, insp)
	pending := 0
	for _, tk := range all {
		info, err := insp.GetTaskInfo(tk.queue, tk.id)
		require.NoError(t, err, "task %s lost", tk.id)
		switch info.State {
		case asynq.TaskStateCompleted:
		case asynq.TaskStatePending:
			require.Zero(t, info.Retried, "task %s: a shutdown spent its budget", tk.id)
			pending++
		default:
			require.Failf(t, "unexpected state", "task %s is %s after the shutdown: %s", tk.id, info.State, info.LastErr)
		}
	}
	t.Logf("%d of %d tasks back to pending", pending, n)
	require.NotZero(t, pending, "the shutdown interrupted nothing: the test proves nothing")

	sims.o.SetDefault(opensrstest.Behavior{})
	sims.d.SetDefault(digicerttest.Behavior{})
	for i := 0; i < n; i += 10 { // the hanging orders the first worker never reached
		sims.o.SetBehavior(strconv.Itoa(from+i), opensrstest.Behavior{})
		sims.d.SetBehavior(strconv.Itoa(from+i+1), digicerttest.Behavior{})
	}
	w2 := startCapWorker(t, bin, sims.env(b.URL, "WORKER_CONCURRENCY=10")...)
	t.Cleanup(func() {
		if t.Failed() {
			log := w2.stderr.String()
			t.Logf("second worker's log (end): %s", log[max(0, len(log)-4000):])
		}
	})
	infos := waitSettled(t, insp, all, 90*time.Second)
	sent := successes(t, sims)
	for _, tk := range all {
		require.Equal(t, asynq.TaskStateCompleted, infos[tk.id].State, "task %s: %s", tk.id, infos[tk.id].LastErr)
		require.Equal(t, 1, sent[tk.order], "order %s accepted once", tk.order)
	}
	code, _ = w2.terminate(t)
	require.Equal(t, exitOK, code)
}

// TestFaultForeignBadTasks: tasks another producer put straight into the
// queues with asynq (garbage bytes, unknown types, broken JSON; an empty
// type is refused by asynq's client itself) are dead-lettered at once with a reason naming the fault, and the
// valid tasks queued among them are all completed: nothing stalls.
func TestFaultForeignBadTasks(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	c := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	sims := newFaultSims(t)

	client := asynq.NewClientFromRedisClient(c)
	defer client.Close()
	bad := []struct {
		queue, typ string
		payload    []byte
		reason     string
	}{
		{"opensrs", tasks.TypeOpenSRSResendCertEmail, []byte{0xff, 0x00, 0xfe, 'g', 'a', 'r', 'b'}, "invalid payload"},
		{"digicert", tasks.TypeDigiCertResendEmails, []byte("\x00\x01\x02 not json"), "invalid payload"},
		{"opensrs", "opensrs:frobnicate", []byte(`{"order_id":"1"}`), `unknown task type "opensrs:frobnicate"`},
		{"digicert", "something:else", []byte(`{}`), `unknown task type "something:else"`},
		{"opensrs", tasks.TypeOpenSRSResendCertEmail, []byte(`{"order_id":"12x"}`), "order_id"},
		{"digicert", tasks.TypeDigiCertResendEmails, []byte(`{"order_id":"3","domain_approval_emails":"nope"}`), "invalid payload"},
	}
	var all []faultTask
	var good []faultTask
	for round := range 5 {
		for i, x := range bad {
			info, err := client.Enqueue(asynq.NewTask(x.typ, x.payload), asynq.Queue(x.queue), asynq.MaxRetry(25))
			require.NoError(t, err)
			all = append(all, faultTask{id: info.ID, queue: x.queue, order: strconv.Itoa(i)})
		}
		g := enqueueFault(t, c, 950_000+round*10, 10, 3)
		good = append(good, g...)
		all = append(all, g...)
	}

	w := startCapWorker(t, bin, sims.env(b.URL, "WORKER_CONCURRENCY=2")...)
	infos := waitSettled(t, insp, all, 60*time.Second)
	store := outcome.NewStore(c, 0)
	isGood := map[string]bool{}
	for _, g := range good {
		isGood[g.id] = true
	}
	for _, tk := range all {
		info := infos[tk.id]
		if isGood[tk.id] {
			require.Equal(t, asynq.TaskStateCompleted, info.State, "valid task %s: %s", tk.id, info.LastErr)
			continue
		}
		i, _ := strconv.Atoi(tk.order)
		require.Equal(t, asynq.TaskStateArchived, info.State, "bad task %d", i)
		require.Zero(t, info.Retried, "bad task %d: dead-lettered at once, not retried", i)
		d := requireDeadLettered(t, store, tk.id)
		require.Equal(t, "invalid_payload", d.Class, "bad task %d", i)
		require.Contains(t, d.LastError, bad[i].reason, "bad task %d", i)
		require.False(t, strings.ContainsRune(d.LastError, '\x00'), "bad task %d: the reason is readable", i)
	}
	requireNoneActive(t, insp)
	code, _ := w.terminate(t)
	require.Equal(t, exitOK, code)
}

package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/testbin"
)

// TestWorkerReplicasSurviveSIGKILL: three worker processes on one Redis
// share 300 OpenSRS tasks (every 25th order fails for good); after a third
// of the provider calls, one of them is killed with SIGKILL. The two others finish everything: every task ends completed or
// dead-lettered with its reason (none lost), and the duplicate provider
// calls are at most the tasks active in the killed worker (its
// concurrency, 5).
func TestWorkerReplicasSurviveSIGKILL(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	rdb := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	const user, key = "replicareseller", "0123456789abcdef0123456789abcdef"
	sim := opensrstest.NewServer(user, key)
	defer sim.Close()
	const delay = 200 * time.Millisecond
	sim.SetDefault(opensrstest.Behavior{Delay: delay})
	const n = 300
	orders := orderRange(120_000, n)
	dead := map[string]bool{}
	for i, o := range orders {
		if i%25 == 0 {
			sim.SetBehavior(o, opensrstest.Behavior{Delay: delay, ErrorCode: 480, ErrorText: "replicas: item not found"})
			dead[o] = true
		}
	}
	env := []string{
		"REDIS_URL=" + b.URL, "HTTP_ADDR=off", "RECONCILE_INTERVAL=2s",
		"OPENSRS_USERNAME=" + user, "OPENSRS_API_KEY=" + key, "OPENSRS_URL=" + sim.URL(),
		"OPENSRS_CONCURRENCY=5", "OPENSRS_MAX_IN_FLIGHT=0", "OUTAGE_THRESHOLD=off",
		// The killed tasks run again once their claim lapses (PROVIDER_TIMEOUT
		// plus a margin): a short timeout keeps the test short.
		"PROVIDER_TIMEOUT=10s",
		"RETRY_BASE=1s", "RETRY_MAX=2s",
	}
	workers := make([]*capWorker, 3)
	for i := range workers {
		workers[i] = startCapWorker(t, bin, env...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, w := range workers {
				lines := strings.Split(w.stderr.String(), "\n")
				t.Logf("worker %d, last log lines:\n%s", i, strings.Join(lines[max(0, len(lines)-30):], "\n"))
			}
		}
	})
	start := time.Now()
	ids := enqueueOpenSRS(t, rdb, orders)

	require.Eventually(t, func() bool { return len(sim.Requests()) >= n/3 }, 2*time.Minute, 10*time.Millisecond)
	// asynq's heartbeat (every 5 s) may not list the active tasks yet: the
	// bound is the killed worker's concurrency, which no worker exceeds.
	killed := workers[0]
	require.Contains(t, killed.stderr.String(), `"msg":"resend attempt"`, "the killed worker was working")
	const bound = 5 // OPENSRS_CONCURRENCY
	require.NoError(t, killed.cmd.Process.Signal(syscall.SIGKILL))
	<-killed.exited
	t.Logf("worker SIGKILLed after %d of %d calls", len(sim.Requests()), n)

	deadline := time.Now().Add(3 * time.Minute)
	archived := 0
	for i, id := range ids {
		for {
			info, err := insp.GetTaskInfo("opensrs", id)
			require.NoError(t, err, "task %s (order %s) lost", id, orders[i])
			if info.State == asynq.TaskStateCompleted {
				require.False(t, dead[orders[i]], "task %s of a failing order completed", id)
				break
			}
			if info.State == asynq.TaskStateArchived {
				require.True(t, dead[orders[i]], "task %s of order %s dead: %s", id, orders[i], info.LastErr)
				require.NotEmpty(t, info.LastErr, "dead letter %s has no reason", id)
				archived++
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s", id, info.State)
			time.Sleep(50 * time.Millisecond)
		}
	}
	require.Equal(t, len(dead), archived)
	dups := 0
	for o := range strings.FieldsSeq(strings.Join(orders, " ")) {
		if !dead[o] {
			dups += max(0, sim.Count(o)-1)
		}
	}
	t.Logf("%d tasks done in %s with one worker SIGKILLed; duplicate provider calls: %d (at most %d active in the killed worker)",
		n, time.Since(start).Round(time.Millisecond), dups, bound)
	require.LessOrEqual(t, dups, bound)
	for _, w := range workers {
		if w == killed {
			continue
		}
		select {
		case <-w.exited:
			t.Fatalf("a surviving worker exited: %s", w.stderr)
		default:
		}
	}
}

package main

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/inflight"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

// enqueueOpenSRS enqueues one OpenSRS task per order and returns the IDs.
func enqueueOpenSRS(t *testing.T, rdb redis.UniversalClient, orders []string) []string {
	t.Helper()
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	ids := make([]string, 0, len(orders))
	for _, o := range orders {
		res, err := enq.Enqueue(t.Context(), tasks.NewOpenSRSPayload(o, "cap", false), opts)
		require.NoError(t, err)
		ids = append(ids, res.ID)
	}
	return ids
}

func orderRange(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(from + i)
	}
	return out
}

// waitCompleted waits until every task of ids is completed, failing on one
// archived.
func waitCompleted(t *testing.T, insp *asynq.Inspector, ids []string, within time.Duration) []*asynq.TaskInfo {
	t.Helper()
	infos := make([]*asynq.TaskInfo, len(ids))
	deadline := time.Now().Add(within)
	for i, id := range ids {
		for {
			info, err := insp.GetTaskInfo("opensrs", id)
			require.NoError(t, err)
			require.NotEqual(t, asynq.TaskStateArchived, info.State, "task %s died: %s", id, info.LastErr)
			if info.State == asynq.TaskStateCompleted {
				infos[i] = info
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s after %s", id, info.State, within)
			time.Sleep(50 * time.Millisecond)
		}
	}
	return infos
}

// TestInFlightCapAcrossWorkerProcesses: three worker processes with
// OPENSRS_MAX_IN_FLIGHT=2 and their default concurrency of 20 each send 60
// OpenSRS tasks to a simulator answering after 150 ms: the simulator never
// has more than 2 requests in flight, and has 2 at least 80% of the time.
// Then a worker is killed with SIGKILL while its call holds a slot: the cap
// is one short only until that slot's lease (PROVIDER_TIMEOUT 12s + 10 s)
// ends, then 2 calls are in flight again; tasks that found no slot went
// back to the queue without spending their budget, recorded with provider
// code in_flight_cap.
func TestInFlightCapAcrossWorkerProcesses(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	rdb := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	const user, key = "capreseller", "0123456789abcdef0123456789abcdef"
	sim := opensrstest.NewServer(user, key)
	defer sim.Close()
	sim.SetDefault(opensrstest.Behavior{Delay: 150 * time.Millisecond})
	// Long enough that half of it (the longest wait for a slot) covers the
	// first backlog's waits; short enough to keep the lease short.
	const providerTimeout = 12 * time.Second
	lease := providerTimeout + inflight.LeaseMargin
	env := []string{
		"REDIS_URL=" + b.URL, "OPENSRS_USERNAME=" + user, "OPENSRS_API_KEY=" + key, "OPENSRS_URL=" + sim.URL(),
		"HTTP_ADDR=off", "OPENSRS_MAX_IN_FLIGHT=2", "PROVIDER_TIMEOUT=" + providerTimeout.String(), "RECONCILE_INTERVAL=1h",
	}
	if v := os.Getenv("CERTMAIL_TEST_MAX_IN_FLIGHT"); v != "" { // to see the test fail without the cap
		env = append(env, "OPENSRS_MAX_IN_FLIGHT="+v)
	}

	ids := enqueueOpenSRS(t, rdb, orderRange(1000, 60))
	workers := make([]*capWorker, 3)
	for i := range workers {
		workers[i] = startCapWorker(t, bin, env...)
	}
	start := time.Now()
	infos := waitCompleted(t, insp, ids, 3*time.Minute)
	took := time.Since(start)
	l := sim.Load()
	t.Logf("60 tasks in %s; at the simulator: most in flight %d, 2 in flight %.0f%% of %s, levels %v",
		took.Round(time.Millisecond), l.Max, 100*l.AtLeast(2), l.Span().Round(time.Millisecond), l.At)
	require.Equal(t, 60, len(sim.Requests()), "one request per task")
	require.LessOrEqual(t, l.Max, 2, "never more than OPENSRS_MAX_IN_FLIGHT requests in flight at the provider")
	require.GreaterOrEqual(t, l.AtLeast(2), 0.8, "the cap is used at least 80%% of the time")
	for _, info := range infos {
		require.Zero(t, info.Retried, "waiting for a slot spends no budget")
	}

	// A call that hangs holds a slot; its worker is killed.
	const hang = "4242"
	sim.SetBehavior(hang, opensrstest.Behavior{Hang: true})
	hangID := enqueueOpenSRS(t, rdb, []string{hang})[0]
	require.Eventually(t, func() bool { return sim.Count(hang) == 1 }, 30*time.Second, 10*time.Millisecond)
	var hungAt time.Time
	for _, r := range sim.Requests() {
		if r.OrderID == hang {
			hungAt = r.Time
		}
	}
	var pid int
	require.Eventually(t, func() bool { // asynq's heartbeat names the server running it
		servers, err := insp.Servers()
		require.NoError(t, err)
		for _, s := range servers {
			for _, a := range s.ActiveWorkers {
				if a.TaskID == hangID {
					pid = s.PID
					return true
				}
			}
		}
		return false
	}, 30*time.Second, 100*time.Millisecond, "no server reports the hanging task")
	var killed *capWorker
	for _, w := range workers {
		if w.cmd.Process.Pid == pid {
			killed = w
		}
	}
	require.NotNil(t, killed, "the hanging task runs in one of the workers")
	sim.SetBehavior(hang, opensrstest.Behavior{}) // its redelivery succeeds
	require.NoError(t, killed.cmd.Process.Signal(syscall.SIGKILL))
	<-killed.exited
	killedAt := time.Now()
	require.Less(t, killedAt.Sub(hungAt), lease-time.Second, "killed while its lease runs")
	require.Eventually(t, func() bool { return sim.Load().Now == 0 }, 10*time.Second, 10*time.Millisecond, "the killed call ended at the simulator")

	// A backlog larger than one slot can clear within the lease.
	sim.ResetLoad()
	more := enqueueOpenSRS(t, rdb, orderRange(2000, 240))
	require.Eventually(t, func() bool { return sim.Load().Now >= 2 }, lease+20*time.Second, 5*time.Millisecond,
		"the cap never came back to 2")
	back := time.Since(hungAt) // the slot was taken just before
	t.Logf("killed %s after its call took the slot; 2 in flight again %s after that (lease %s)",
		killedAt.Sub(hungAt).Round(time.Millisecond), back.Round(time.Millisecond), lease)
	require.LessOrEqual(t, back, lease+5*time.Second, "the dead worker's slot came back within its lease")
	require.GreaterOrEqual(t, back, lease-time.Second, "the dead worker's slot was honoured until its lease ran out")

	infos = waitCompleted(t, insp, more, 3*time.Minute)
	l = sim.Load()
	require.LessOrEqual(t, l.Max, 2, "never more than the cap, also after the kill")
	store := outcome.NewStore(rdb, 0)
	bounced := 0
	for i, info := range infos {
		as, err := store.Attempts(t.Context(), more[i])
		require.NoError(t, err)
		require.Zero(t, info.Retried, "task %s: waiting for a slot spends no budget: %+v", more[i], as)
		for _, a := range as {
			if a.Outcome == outcome.RateLimited {
				bounced++
				require.Equal(t, inflight.Code, a.ProviderCode, "attempt %+v", a)
			}
		}
	}
	t.Logf("%d attempts went back to the queue for want of a slot (provider code %s)", bounced, inflight.Code)
}

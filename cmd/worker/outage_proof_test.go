package main

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

// outageTask is one enqueued task and the queue it lives in.
type outageTask struct{ id, queue string }

func enqueueDigiCert(t *testing.T, c redis.UniversalClient, orders []string) []string {
	t.Helper()
	enq := tasks.NewEnqueuer(c)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	ids := make([]string, 0, len(orders))
	for _, o := range orders {
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: o, Locale: "en"}, opts)
		require.NoError(t, err)
		ids = append(ids, res.ID)
	}
	return ids
}

// TestOutageProof: two worker processes, both providers configured, 200
// tasks (100 OpenSRS, 100 DigiCert). 40 come before the outage; then both
// simulators answer 503 to everything for 40 s while the other 160 arrive
// (a steady trickle, as a live system sees them), then recover. Checked:
// both circuits open (read through internal/rdb); from one second after
// they opened, no task's retried grows; while failing, each simulator sees
// at most 40 s / probe interval + 2 requests after its circuit opened; no
// task ends archived and every task completes after the recovery. Then,
// with digicert paused by hand, an OpenSRS outage comes and goes: the pause
// stays and the tasks behind it stay pending.
//
// CERTMAIL_TEST_OUTAGE_THRESHOLD=0 runs it with outage handling off, to see
// it fail.
func TestOutageProof(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	c := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(c)
	defer insp.Close()
	r := rdb.New(c)

	const user, okey, dkey = "outagereseller", "0123456789abcdef0123456789abcdef", "outage-digicert-key"
	osim := opensrstest.NewServer(user, okey)
	defer osim.Close()
	dsim := digicerttest.NewServer(dkey)
	defer dsim.Close()

	const probe = 5 * time.Second
	threshold := "5"
	if v := os.Getenv("CERTMAIL_TEST_OUTAGE_THRESHOLD"); v != "" {
		threshold = v
	}
	env := []string{
		"REDIS_URL=" + b.URL, "HTTP_ADDR=off", "RECONCILE_INTERVAL=1h",
		"OPENSRS_USERNAME=" + user, "OPENSRS_API_KEY=" + okey, "OPENSRS_URL=" + osim.URL(),
		"DIGICERT_API_KEY=" + dkey, "DIGICERT_URL=" + dsim.URL(),
		"OUTAGE_THRESHOLD=" + threshold, "OUTAGE_WINDOW=10s", "OUTAGE_PROBE_INTERVAL=" + probe.String(),
		"RETRY_BASE=1s", "RETRY_MAX=2s",
	}
	for range 2 {
		startCapWorker(t, bin, env...)
	}

	var mu sync.Mutex
	var all []outageTask
	add := func(from, n int) {
		for _, id := range enqueueOpenSRS(t, c, orderRange(from, n)) {
			mu.Lock()
			all = append(all, outageTask{id, "opensrs"})
			mu.Unlock()
		}
		for _, id := range enqueueDigiCert(t, c, orderRange(from+500_000, n)) {
			mu.Lock()
			all = append(all, outageTask{id, "digicert"})
			mu.Unlock()
		}
	}
	add(10_000, 20)
	snapshot := func() []outageTask {
		mu.Lock()
		defer mu.Unlock()
		return append([]outageTask(nil), all...)
	}
	waitTasks(t, insp, snapshot(), time.Minute)

	// The outage.
	osim.SetDefault(opensrstest.Behavior{TransientFailures: 1 << 30})
	dsim.SetDefault(digicerttest.Behavior{TransientFailures: 1 << 30})
	failFrom := time.Now()
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for i := range 16 { // 5 per provider every second
			add(20_000+i*5, 5)
			time.Sleep(time.Second)
		}
	}()

	oHash, dHash := rdb.CredentialHash(user+"\x00"+okey), rdb.CredentialHash(dkey)
	opened := map[string]time.Time{}
	for time.Since(failFrom) < 10*time.Second && len(opened) < 2 {
		for p, h := range map[string]string{"opensrs": oHash, "digicert": dHash} {
			if _, ok := opened[p]; ok {
				continue
			}
			open, err := r.OutageOpen(t.Context(), p, h)
			require.NoError(t, err)
			if open {
				opened[p] = time.Now()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(opened) < 2 {
		// Go on, so that a run without the circuit shows what it costs.
		t.Errorf("circuits open within 10 s of the outage: %v, want both", opened)
		for _, p := range []string{"opensrs", "digicert"} {
			if _, ok := opened[p]; !ok {
				opened[p] = failFrom.Add(10 * time.Second)
			}
		}
	}
	t.Logf("circuits open after: opensrs %s, digicert %s", opened["opensrs"].Sub(failFrom).Round(time.Millisecond),
		opened["digicert"].Sub(failFrom).Round(time.Millisecond))

	// Attempts already under way when the circuit opened may still be
	// charged; one second later every one of them has ended.
	time.Sleep(time.Second)
	retried := map[string]int{}
	for _, tk := range snapshot() {
		info, err := insp.GetTaskInfo(tk.queue, tk.id)
		require.NoError(t, err)
		require.NotEqual(t, asynq.TaskStateArchived, info.State, "task %s died: %s", tk.id, info.LastErr)
		retried[tk.id] = info.Retried
	}

	time.Sleep(time.Until(failFrom.Add(40 * time.Second)))
	recoverAt := time.Now()
	osim.SetDefault(opensrstest.Behavior{})
	dsim.SetDefault(digicerttest.Behavior{})
	<-trickled

	// Requests received while failing, after the circuit opened: probes.
	maxProbes := int((recoverAt.Sub(failFrom))/probe) + 2
	var oBefore, oAfter, dBefore, dAfter int
	for _, q := range osim.Requests() {
		if q.Outcome.StatusCode == 503 {
			if q.Time.Before(opened["opensrs"]) {
				oBefore++
			} else {
				oAfter++
			}
		}
	}
	for _, q := range dsim.Requests() {
		if q.Status == 503 {
			if q.Time.Before(opened["digicert"]) {
				dBefore++
			} else {
				dAfter++
			}
		}
	}
	t.Logf("503s before/after the circuit opened: opensrs %d/%d, digicert %d/%d (probe bound %d)", oBefore, oAfter, dBefore, dAfter, maxProbes)
	require.LessOrEqual(t, oAfter, maxProbes, "opensrs saw more than probes while its circuit was open")
	require.LessOrEqual(t, dAfter, maxProbes, "digicert saw more than probes while its circuit was open")

	infos := waitTasks(t, insp, snapshot(), time.Minute)
	t.Logf("200 tasks completed %s after the recovery", time.Since(recoverAt).Round(time.Millisecond))
	require.Len(t, infos, 200)
	for _, info := range infos {
		require.Equal(t, retried[info.ID], info.Retried, "task %s (%s): retried grew after the circuit opened", info.ID, info.Queue)
	}

	// An operator pauses digicert by hand; an OpenSRS outage opens and
	// closes its circuit meanwhile. The pause is the operator's: it stays,
	// and the tasks behind it wait.
	require.NoError(t, insp.PauseQueue("digicert"))
	held := enqueueDigiCert(t, c, orderRange(900_000, 3))
	osim.SetDefault(opensrstest.Behavior{TransientFailures: 1 << 30})
	dsim.SetDefault(digicerttest.Behavior{TransientFailures: 1 << 30})
	var more []outageTask
	for _, id := range enqueueOpenSRS(t, c, orderRange(30_000, 10)) {
		more = append(more, outageTask{id, "opensrs"})
	}
	require.Eventually(t, func() bool {
		open, err := r.OutageOpen(t.Context(), "opensrs", oHash)
		require.NoError(t, err)
		return open
	}, 20*time.Second, 50*time.Millisecond, "the opensrs circuit opens again")
	time.Sleep(probe + time.Second) // a probe fails while the queue is paused
	osim.SetDefault(opensrstest.Behavior{})
	dsim.SetDefault(digicerttest.Behavior{})
	waitTasks(t, insp, more, time.Minute)
	time.Sleep(2 * time.Second) // time for a wrongful resume to show
	qi, err := insp.GetQueueInfo("digicert")
	require.NoError(t, err)
	require.True(t, qi.Paused, "the hand-made pause of digicert was lifted")
	for _, id := range held {
		info, err := insp.GetTaskInfo("digicert", id)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State, "task %s behind the pause", id)
	}
	for _, q := range dsim.Requests() {
		require.NotContains(t, []string{"900000", "900001", "900002"}, q.OrderID, "a paused task reached DigiCert")
	}
}

// waitTasks waits until every task is completed, failing on one archived.
func waitTasks(t *testing.T, insp *asynq.Inspector, tks []outageTask, within time.Duration) []*asynq.TaskInfo {
	t.Helper()
	infos := make([]*asynq.TaskInfo, len(tks))
	deadline := time.Now().Add(within)
	for i, tk := range tks {
		for {
			info, err := insp.GetTaskInfo(tk.queue, tk.id)
			require.NoError(t, err)
			require.NotEqual(t, asynq.TaskStateArchived, info.State, "task %s died: %s", tk.id, info.LastErr)
			if info.State == asynq.TaskStateCompleted {
				infos[i] = info
				break
			}
			require.True(t, time.Now().Before(deadline), "task %s still %s after %s", tk.id, info.State, within)
			time.Sleep(50 * time.Millisecond)
		}
	}
	return infos
}

package main

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestDigiCertBacklogDoesNotDelayOpenSRS: each provider has its own share of
// the worker's concurrency. 20 OpenSRS tasks (simulator latency 200 ms,
// 4 at once) complete as fast behind a backlog of 200 DigiCert tasks waiting
// on DIGICERT_RATE_LIMIT=1/1s as with no backlog at all (within 1.2x plus
// 3 s of slack: CI runs other packages beside it on 2 cores, and the old
// single-server code took ~20 s behind the backlog against ~1 s alone, so
// the slack costs the test nothing), and no task waiting on the limiter
// has its retry count incremented. With one asynq server for both queues
// the DigiCert tasks waiting for their slot held the shared concurrency and
// the OpenSRS tasks queued behind them.
func TestDigiCertBacklogDoesNotDelayOpenSRS(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	// The in-flight cap is off so that only the worker's concurrency (4,
	// startWorker's) paces OpenSRS.
	w := startWorker(t, b, "--digicert-rate-limit", "1/1s", "--opensrs-max-in-flight", "0")
	const latency = 200 * time.Millisecond
	w.demo.opensrs.SetDefault(opensrstest.Behavior{Delay: latency})
	rdb := b.Client(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	// burst enqueues 20 OpenSRS tasks and returns how long they took to
	// complete: from the first enqueue to the last request's answer at the
	// simulator.
	burst := func(from int) time.Duration {
		orders := orderRange(from, 20)
		start := time.Now()
		ids := enqueueOpenSRS(t, rdb, orders)
		for _, info := range waitCompleted(t, insp, ids, 2*time.Minute) {
			require.Zero(t, info.Retried)
		}
		var last time.Time
		for _, r := range w.demo.opensrs.Requests() {
			if slices.Contains(orders, r.OrderID) && r.Time.After(last) {
				last = r.Time
			}
		}
		return last.Add(latency).Sub(start)
	}
	burst(100) // warm up: connections, Redis scripts
	alone := burst(6000)

	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	var backlog []string
	for i := range 200 {
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: fmt.Sprint(8000 + i)}, opts)
		require.NoError(t, err)
		backlog = append(backlog, res.ID)
	}
	// The backlog fills DigiCert's share: every slot holds a task waiting
	// on the limiter.
	require.Eventually(t, func() bool {
		q, err := insp.GetQueueInfo("digicert")
		return err == nil && q.Active >= 4 && len(w.demo.digicert.Requests()) >= 2
	}, 30*time.Second, 20*time.Millisecond, "the DigiCert backlog never filled the worker")

	behind := burst(7000)
	sent := len(w.demo.digicert.Requests())
	t.Logf("20 OpenSRS tasks: %s alone, %s behind a DigiCert backlog (%d of 200 sent so far)",
		alone.Round(time.Millisecond), behind.Round(time.Millisecond), sent)
	require.Less(t, sent, 150, "the backlog was still waiting on its limit during the burst")
	const slack = 3 * time.Second
	require.LessOrEqual(t, behind, time.Duration(1.2*float64(alone))+slack,
		"OpenSRS tasks are not delayed by DigiCert tasks waiting on their limit")

	// Waiting on the limiter, in place or back in the queue, spends no budget.
	for _, id := range backlog {
		info, err := insp.GetTaskInfo("digicert", id)
		require.NoError(t, err)
		require.Zero(t, info.Retried, "task %s (%s): %s", id, info.State, info.LastErr)
	}
}

// TestConcurrencyPerProvider: OPENSRS_CONCURRENCY and DIGICERT_CONCURRENCY
// (or their flags) set each provider's share; unset, each is
// WORKER_CONCURRENCY, what a worker processed at once before per-provider
// shares.
func TestConcurrencyPerProvider(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                  string
		args                  []string
		env                   map[string]string
		wantOpenSRS, wantDigi int
	}{
		{"defaults", nil, nil, 20, 20},
		{"worker concurrency for both", nil, map[string]string{"WORKER_CONCURRENCY": "7"}, 7, 7},
		{"opensrs alone", nil, map[string]string{"OPENSRS_CONCURRENCY": "3"}, 3, 20},
		{"both by flag", []string{"--opensrs-concurrency", "2", "--digicert-concurrency", "9", "--concurrency", "5"}, nil, 2, 9},
		{"zero is unset", nil, map[string]string{"DIGICERT_CONCURRENCY": "0", "WORKER_CONCURRENCY": "4"}, 4, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DIGICERT_API_KEY": "k"}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := loadConfig(tc.args, nil, envOf(env))
			require.NoError(t, err)
			require.Equal(t, tc.wantOpenSRS, cfg.concurrencyOf(providers.OpenSRS))
			require.Equal(t, tc.wantDigi, cfg.concurrencyOf(providers.DigiCert))
		})
	}
}

// TestOneServerPerQueue: the worker runs one asynq server per provider
// queue, each with its provider's concurrency, and /readyz says ready while
// they run.
func TestOneServerPerQueue(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		w := startWorker(t, b, "--opensrs-concurrency", "3", "--digicert-concurrency", "5")
		insp := asynq.NewInspectorFromRedisClient(b.Client(t))
		defer insp.Close()
		var got map[string]int
		require.Eventually(t, func() bool {
			servers, err := insp.Servers()
			require.NoError(t, err)
			got = map[string]int{}
			for _, s := range servers {
				for q := range s.Queues {
					got[q] = s.Concurrency
				}
				require.Len(t, s.Queues, 1, "one queue per server: %v", s.Queues)
			}
			return len(got) == 2
		}, 20*time.Second, 50*time.Millisecond)
		require.Equal(t, map[string]int{"opensrs": 3, "digicert": 5}, got)
		resp, err := http.Get("http://" + w.addr + "/readyz")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, exitOK, w.stop(t))
	})
}

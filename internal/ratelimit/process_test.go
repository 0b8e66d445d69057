package ratelimit_test

import (
	"bytes"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// arrivalsInWindow is the most arrivals in any window (a-per, a] ending at
// an arrival a; times sorted.
func arrivalsInWindow(times []time.Time, per time.Duration) int {
	most, lo := 0, 0
	for hi, a := range times {
		for !times[lo].After(a.Add(-per)) {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

// TestWorkerFleetHoldsAndUsesTheLimit: three worker processes sharing one
// real Redis and one DigiCert API key send a backlog of 400 tasks to one
// DigiCert simulator (plain HTTP on loopback, which DIGICERT_URL allows)
// under DIGICERT_RATE_LIMIT, DigiCert's default and a scaled-down one.
// Counted at the simulator, by its arrival times: no window of a rule's
// length holds more than its N, and the backlog is sent within 1.15 times
// the fastest legal time. Each task reaches the simulator once, and every
// attempt before its success is a rate-limit requeue recorded as
// local_rate_limit that left its retry count alone.
func TestWorkerFleetHoldsAndUsesTheLimit(t *testing.T) {
	tests := []struct {
		name, limit string
		windows     []ratelimit.Rule
		fastest     time.Duration
	}{
		// The 400th request no sooner than 34 s after the first: 100 per
		// 10 s, 20 per second.
		{"scaled", "20/1s,100/10s", []ratelimit.Rule{{N: 20, Per: time.Second}, {N: 100, Per: 10 * time.Second}}, 34 * time.Second},
		// DigiCert's own: bursts of 100 at 0, 5, 10 and 15 s.
		{"default", ratelimit.DigiCertDefault, []ratelimit.Rule{{N: 100, Per: 5 * time.Second}, {N: 1000, Per: 3 * time.Minute}}, 15 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { fleet(t, tc.limit, tc.windows, tc.fastest) })
	}
}

func fleet(t *testing.T, limit string, windows []ratelimit.Rule, fastest time.Duration) {
	b := redistest.Real(t)
	bin := testbin.Build(t, "cmd/worker")
	rdb := b.Client(t)
	const key = "fleet-test-key"
	sim := digicerttest.NewServer(key)
	defer sim.Close()

	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	const n = 400
	ids := make([]string, n)
	for i := range n {
		res, err := enq.Enqueue(t.Context(), &tasks.DigiCertPayload{OrderID: strconv.Itoa(3_000_000 + i), Locale: "en"}, opts)
		require.NoError(t, err)
		ids[i] = res.ID
	}

	var logs []*lockedBuffer
	for range 3 {
		cmd := exec.Command(bin, "--redis-url", b.URL, "--http-addr", "127.0.0.1:0")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
			"DIGICERT_API_KEY=" + key, "DIGICERT_URL=" + sim.URL(), "DIGICERT_RATE_LIMIT=" + limit}
		stderr := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = &lockedBuffer{}, stderr
		require.NoError(t, cmd.Start())
		logs = append(logs, stderr)
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	}

	require.Eventually(t, func() bool {
		seen := map[string]bool{}
		for _, r := range sim.Requests() {
			if r.Status == 204 {
				seen[r.OrderID] = true
			}
		}
		return len(seen) == n
	}, 3*time.Minute, 200*time.Millisecond, "the backlog was not sent; worker logs: %s", logs[0])

	reqs := sim.Requests()
	require.Len(t, reqs, n, "every task reached the simulator once, and only those")
	times := make([]time.Time, len(reqs))
	for i, r := range reqs {
		times[i] = r.Time
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	span := times[len(times)-1].Sub(times[0])
	t.Logf("400 requests in %s (fastest legal %s, %.2fx)", span.Round(time.Millisecond), fastest, span.Seconds()/fastest.Seconds())
	for _, w := range windows {
		most := arrivalsInWindow(times, w.Per)
		t.Logf("most in a %s window: %d (limit %d)", w.Per, most, w.N)
		require.LessOrEqual(t, most, w.N, "a %s window held more than %d requests", w.Per, w.N)
	}
	require.LessOrEqual(t, span, fastest*115/100, "the backlog took longer than 1.15x the fastest legal time")

	for _, l := range logs {
		require.False(t, strings.Contains(l.String(), key), "the API key never reaches a log")
	}
	// Every attempt either sent the request or was held back by the limiter,
	// recorded as such with the exact wait; none was charged as a failure.
	store := outcome.NewStore(rdb, 0)
	var limited int
	for _, id := range ids {
		as, err := store.Attempts(t.Context(), id)
		require.NoError(t, err)
		require.NotEmpty(t, as)
		for _, a := range as {
			require.Equal(t, 1, a.Attempt, "task %s: retried grew, so a wait spent its budget", id)
		}
		for _, a := range as[:len(as)-1] {
			require.Equal(t, outcome.RateLimited, a.Outcome, "task %s: %+v", id, a)
			require.Equal(t, "local_rate_limit", a.ProviderCode)
			require.Positive(t, a.RetryInMS)
			limited++
		}
		require.Equal(t, outcome.Succeeded, as[len(as)-1].Outcome)
	}
	t.Logf("%d attempts held back by the limiter and sent back to the queue", limited)
}

package metrics_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/metrics"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var _ tasks.Observer = (*metrics.Metrics)(nil)

// scrape fetches the handler's output in the text format and parses it.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Contains(t, rec.Header().Get("Content-Type"), "text/plain")
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	require.NoError(t, err)
	return fams
}

// find returns the metric of family name whose labels are exactly labels.
func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fams[name]
	require.True(t, ok, "family %s missing", name)
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) == len(labels) {
			match := true
			for k, v := range labels {
				if got[k] != v {
					match = false
				}
			}
			if match {
				return m
			}
		}
	}
	require.Failf(t, "series missing", "%s%v", name, labels)
	return nil
}

func gauge(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	return find(t, fams, name, labels).GetGauge().GetValue()
}

func queueTasks(t *testing.T, fams map[string]*dto.MetricFamily, queue string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, s := range metrics.States {
		out[s] = gauge(t, fams, "certmail_queue_tasks", map[string]string{"queue": queue, "state": s})
	}
	return out
}

func enqueue(t *testing.T, c *asynq.Client, queue string, opts ...asynq.Option) *asynq.TaskInfo {
	t.Helper()
	info, err := c.Enqueue(asynq.NewTask(queue+":test", []byte(`{"order_id":"1"}`)), append(opts, asynq.Queue(queue))...)
	require.NoError(t, err)
	return info
}

// countingInspector counts GetQueueInfo calls.
type countingInspector struct {
	metrics.QueueInspector
	calls atomic.Int64
}

func (c *countingInspector) GetQueueInfo(q string) (*asynq.QueueInfo, error) {
	c.calls.Add(1)
	return c.QueueInspector.GetQueueInfo(q)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		client := asynq.NewClientFromRedisClient(rdb)
		insp := asynq.NewInspectorFromRedisClient(rdb)
		store := outcome.NewStore(rdb, 0)
		ctx := t.Context()

		// digicert: 2 pending, 1 scheduled, 1 archived; opensrs: never used.
		enqueue(t, client, tasks.QueueDigiCert)
		enqueue(t, client, tasks.QueueDigiCert)
		enqueue(t, client, tasks.QueueDigiCert, asynq.ProcessIn(time.Hour))
		arch := enqueue(t, client, tasks.QueueDigiCert)
		require.NoError(t, insp.ArchiveTask(tasks.QueueDigiCert, arch.ID))
		for _, id := range []string{"d1", "d2", "d3"} {
			// Recorded as the handler does (AddDead only records tasks asynq still archives).
			d := outcome.DeadLetter{ID: id, Queue: "digicert", LastFailedAt: time.Now()}
			require.NoError(t, store.Record(ctx, outcome.Attempt{TaskID: id, Queue: "digicert", Outcome: outcome.Dead, At: d.LastFailedAt}, &d))
		}

		m := metrics.New(insp, store, tasks.Queues)
		m.ObserveAttempt("digicert", outcome.Succeeded, 300*time.Millisecond)
		m.ObserveAttempt("digicert", outcome.Succeeded, 100*time.Millisecond)
		m.ObserveAttempt("digicert", outcome.Dead, 0) // no provider call
		m.ObserveAttempt("opensrs", outcome.RateLimited, 2*time.Second)

		fams := scrape(t, m.Handler())

		attempts := []struct {
			provider, outcome string
			want              float64
		}{
			{"digicert", "succeeded", 2},
			{"digicert", "dead", 1},
			{"digicert", "retrying", 0},
			{"opensrs", "rate_limited", 1},
			{"opensrs", "succeeded", 0},
		}
		for _, a := range attempts {
			got := find(t, fams, "certmail_attempts_total", map[string]string{"provider": a.provider, "outcome": a.outcome})
			require.Equal(t, a.want, got.GetCounter().GetValue(), "%s/%s", a.provider, a.outcome)
		}

		h := find(t, fams, "certmail_provider_latency_seconds", map[string]string{"provider": "digicert"}).GetHistogram()
		require.Equal(t, uint64(2), h.GetSampleCount(), "the attempt without a provider call is not observed")
		require.InDelta(t, 0.4, h.GetSampleSum(), 1e-9)
		h = find(t, fams, "certmail_provider_latency_seconds", map[string]string{"provider": "opensrs"}).GetHistogram()
		require.Equal(t, uint64(1), h.GetSampleCount())

		require.Equal(t, map[string]float64{"pending": 2, "active": 0, "scheduled": 1, "retry": 0, "archived": 1, "completed": 0},
			queueTasks(t, fams, "digicert"))
		require.Equal(t, map[string]float64{"pending": 0, "active": 0, "scheduled": 0, "retry": 0, "archived": 0, "completed": 0},
			queueTasks(t, fams, "opensrs"), "a queue asynq has not seen yet is empty")
		require.Equal(t, 3.0, gauge(t, fams, "certmail_dead_letters", nil))

		for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "certmail_queue_stats_age_seconds"} {
			require.Contains(t, fams, name)
		}
	})
}

func TestQueueStatsCache(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		client := asynq.NewClientFromRedisClient(rdb)
		insp := asynq.NewInspectorFromRedisClient(rdb)
		for _, q := range tasks.Queues {
			enqueue(t, client, q)
		}

		var mu sync.Mutex
		now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }

		m := metrics.New(insp, nil, tasks.Queues, metrics.WithClock(clock), metrics.WithRefreshInterval(15*time.Second))
		counter := &countingInspector{}
		metrics.WrapInspector(m, func(i metrics.QueueInspector) metrics.QueueInspector {
			counter.QueueInspector = i
			return counter
		})
		pending := func(fams map[string]*dto.MetricFamily) float64 {
			return gauge(t, fams, "certmail_queue_tasks", map[string]string{"queue": "digicert", "state": "pending"})
		}
		queues := int64(len(tasks.Queues))

		require.Equal(t, 1.0, pending(scrape(t, m.Handler())))
		require.Equal(t, queues, counter.calls.Load(), "first scrape reads every queue once")

		enqueue(t, client, tasks.QueueDigiCert)
		advance(10 * time.Second)
		fams := scrape(t, m.Handler())
		require.Equal(t, queues, counter.calls.Load(), "second scrape within the interval reads nothing")
		require.Equal(t, 1.0, pending(fams), "and shows the cached value")
		require.Equal(t, 10.0, gauge(t, fams, "certmail_queue_stats_age_seconds", map[string]string{"queue": "digicert"}))

		advance(6 * time.Second)
		require.Equal(t, 2.0, pending(scrape(t, m.Handler())))
		require.Equal(t, 2*queues, counter.calls.Load(), "a scrape after the interval refreshes")
	})
}

// blockingInspector answers only when released.
type blockingInspector struct {
	release chan struct{}
}

func (b *blockingInspector) Queues() ([]string, error) { return []string{"digicert"}, nil }

func (b *blockingInspector) GetQueueInfo(q string) (*asynq.QueueInfo, error) {
	<-b.release
	return &asynq.QueueInfo{Queue: q, Pending: 7}, nil
}

// slowDead is a DeadCounter that honours its context.
type slowDead struct{}

func (slowDead) CountDead(ctx context.Context) (int64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func TestScrapeDoesNotBlock(t *testing.T) {
	t.Parallel()
	bi := &blockingInspector{release: make(chan struct{})}
	m := metrics.New(nil, slowDead{}, []string{"digicert"}, metrics.WithScrapeTimeout(100*time.Millisecond))
	metrics.WrapInspector(m, func(metrics.QueueInspector) metrics.QueueInspector { return bi })

	start := time.Now()
	fams := scrape(t, m.Handler())
	require.Less(t, time.Since(start), 2*time.Second)
	require.NotContains(t, fams, "certmail_queue_tasks", "nothing cached yet")
	require.NotContains(t, fams, "certmail_dead_letters")

	// The error counters are gathered concurrently with the timed-out
	// collector, so they show in the next scrape, which times out again.
	fams = scrape(t, m.Handler())
	require.NotContains(t, fams, "certmail_queue_tasks")
	require.GreaterOrEqual(t, find(t, fams, "certmail_queue_stats_errors_total", nil).GetCounter().GetValue(), 1.0)
	require.GreaterOrEqual(t, find(t, fams, "certmail_dead_letters_errors_total", nil).GetCounter().GetValue(), 1.0)

	close(bi.release) // the refresh started by the first scrape completes
	require.Eventually(t, func() bool {
		_, ok := scrape(t, m.Handler())["certmail_queue_tasks"]
		return ok
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 7.0, gauge(t, scrape(t, m.Handler()), "certmail_queue_tasks", map[string]string{"queue": "digicert", "state": "pending"}))
}

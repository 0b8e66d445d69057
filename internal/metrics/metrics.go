// Package metrics exposes the worker's Prometheus metrics on a private
// registry (never the global one):
//
//	certmail_attempts_total{provider,outcome}        counter, one per handler run
//	certmail_provider_latency_seconds{provider}      histogram of provider calls
//	certmail_queue_tasks{queue,state}                gauge, tasks per asynq state
//	certmail_queue_stats_age_seconds{queue}          gauge, age of the cached queue_tasks
//	certmail_queue_stats_errors_total                counter, failed queue stat refreshes
//	certmail_dead_letters                            gauge, records in the dead-letter store
//	certmail_dead_letters_errors_total               counter, scrapes that could not count them
//	certmail_in_flight_slots{provider}               gauge, in-flight cap slots this worker holds (WatchSlots)
//	certmail_in_flight_waiting{provider}             gauge, calls of this worker waiting for a slot
//	certmail_provider_circuit_open{provider}         gauge, 1 while the provider's outage circuit is open (WatchCircuits)
//	go_* and process_*                               Go runtime and process collectors
//
// Queue sizes come from asynq's Inspector.GetQueueInfo, a Lua script per
// queue that samples MEMORY USAGE and blocks Redis while it runs (docs/asynq.md
// §9). They are therefore cached: a scrape starts a refresh only when the
// cache is older than the refresh interval (15 s by default), at most one
// refresh runs at a time, and a scrape waits for it no longer than the scrape
// timeout before answering with the values it has. The dead-letter count is a
// single ZCARD and is read on every scrape, within the same timeout.
package metrics

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/certmail/certmail/internal/outcome"
)

// Defaults of the options.
const (
	DefaultRefreshInterval = 15 * time.Second
	DefaultScrapeTimeout   = 2 * time.Second
)

// States are the asynq task states reported by certmail_queue_tasks.
var States = []string{"pending", "active", "scheduled", "retry", "archived", "completed"}

// DeadCounter counts dead letters; *outcome.Store implements it.
type DeadCounter interface {
	CountDead(ctx context.Context) (int64, error)
}

var _ DeadCounter = (*outcome.Store)(nil)

// queueInspector is the part of *asynq.Inspector the metrics use.
type queueInspector interface {
	Queues() ([]string, error)
	GetQueueInfo(queue string) (*asynq.QueueInfo, error)
}

// Option configures New.
type Option func(*Metrics)

// WithRefreshInterval sets how old the cached queue sizes may get before a
// scrape refreshes them; values ≤ 0 keep the default (15 s).
func WithRefreshInterval(d time.Duration) Option {
	return func(m *Metrics) {
		if d > 0 {
			m.refresh = d
		}
	}
}

// WithScrapeTimeout bounds how long a scrape waits for Redis (the queue stat
// refresh and the dead-letter count); values ≤ 0 keep the default (2 s).
func WithScrapeTimeout(d time.Duration) Option {
	return func(m *Metrics) {
		if d > 0 {
			m.timeout = d
		}
	}
}

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option {
	return func(m *Metrics) {
		if now != nil {
			m.now = now
		}
	}
}

// Metrics holds the worker's metrics. ObserveAttempt is safe for concurrent
// use; Handler serves them in the Prometheus exposition formats.
type Metrics struct {
	reg      *prometheus.Registry
	attempts *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	inspect queueInspector
	dead    DeadCounter
	queues  []string
	refresh time.Duration
	timeout time.Duration
	now     func() time.Time

	queueTasks *prometheus.Desc
	statsAge   *prometheus.Desc
	deadDesc   *prometheus.Desc
	statErrors prometheus.Counter
	deadErrors prometheus.Counter

	mu         sync.Mutex
	stats      map[string]queueStats // by queue; only successfully read queues
	lastStart  time.Time             // start of the last refresh, successful or not
	refreshing chan struct{}         // closed when the running refresh ends; nil when idle
}

type queueStats struct {
	counts [6]int // in the order of States
	at     time.Time
}

// New returns the metrics of a worker consuming queues. inspector may be
// nil (no queue sizes are then exported), and so may dead (no dead-letter
// count).
func New(inspector *asynq.Inspector, dead DeadCounter, queues []string, opts ...Option) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certmail_attempts_total",
			Help: "Resend attempts (handler runs) by provider and outcome.",
		}, []string{"provider", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "certmail_provider_latency_seconds",
			Help:    "Duration of provider API calls, in-attempt retries included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"provider"}),
		dead:    dead,
		queues:  slices.Clone(queues),
		refresh: DefaultRefreshInterval,
		timeout: DefaultScrapeTimeout,
		now:     time.Now,
		queueTasks: prometheus.NewDesc("certmail_queue_tasks",
			"Tasks per asynq queue and state (cached; see certmail_queue_stats_age_seconds).",
			[]string{"queue", "state"}, nil),
		statsAge: prometheus.NewDesc("certmail_queue_stats_age_seconds",
			"Seconds since certmail_queue_tasks was last read from Redis for the queue.",
			[]string{"queue"}, nil),
		deadDesc: prometheus.NewDesc("certmail_dead_letters",
			"Dead letters in the outcome store (tasks that ended dead and were not replayed or deleted).",
			nil, nil),
		statErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certmail_queue_stats_errors_total",
			Help: "Queue stat refreshes that failed or did not finish within the scrape timeout.",
		}),
		deadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certmail_dead_letters_errors_total",
			Help: "Scrapes whose dead-letter count could not be read.",
		}),
		stats: map[string]queueStats{},
	}
	if inspector != nil {
		m.inspect = inspector
	}
	for _, o := range opts {
		o(m)
	}
	// Known series start at zero so that rate() and absent() behave from the
	// first scrape.
	for _, q := range m.queues {
		for _, o := range []outcome.Outcome{outcome.Succeeded, outcome.Retrying, outcome.RateLimited, outcome.Dead} {
			m.attempts.WithLabelValues(q, string(o))
		}
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.attempts, m.latency, m.statErrors, m.deadErrors,
		(*redisCollector)(m),
	)
	return m
}

// ObserveAttempt implements tasks.Observer. latency is the provider call's
// duration; 0 means no call was made and the histogram is left alone.
func (m *Metrics) ObserveAttempt(provider string, o outcome.Outcome, latency time.Duration) {
	m.attempts.WithLabelValues(provider, string(o)).Inc()
	if latency > 0 {
		m.latency.WithLabelValues(provider).Observe(latency.Seconds())
	}
}

// Handler serves the metrics (text or OpenMetrics format, as negotiated).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:          m.reg, // promhttp_metric_handler_errors_total
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// Registry returns the private registry, for callers adding their own
// collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// redisCollector is the collector of the Redis-backed metrics.
type redisCollector Metrics

// Describe implements prometheus.Collector.
func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queueTasks
	ch <- c.statsAge
	ch <- c.deadDesc
}

// Collect implements prometheus.Collector.
func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	deadline := time.Now().Add(m.timeout)
	var wg sync.WaitGroup
	if m.dead != nil {
		wg.Go(func() { m.collectDead(ch, deadline) })
	}
	if m.inspect != nil {
		m.collectQueues(ch, deadline)
	}
	wg.Wait()
}

func (m *Metrics) collectDead(ch chan<- prometheus.Metric, deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	n, err := m.dead.CountDead(ctx)
	if err != nil {
		m.deadErrors.Inc()
		return
	}
	ch <- prometheus.MustNewConstMetric(m.deadDesc, prometheus.GaugeValue, float64(n))
}

func (m *Metrics) collectQueues(ch chan<- prometheus.Metric, deadline time.Time) {
	if done := m.startRefresh(); done != nil {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-done:
		case <-t.C:
			m.statErrors.Inc() // answered with the old values
		}
		t.Stop()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, q := range m.queues {
		s, ok := m.stats[q]
		if !ok {
			continue
		}
		for i, state := range States {
			ch <- prometheus.MustNewConstMetric(m.queueTasks, prometheus.GaugeValue, float64(s.counts[i]), q, state)
		}
		ch <- prometheus.MustNewConstMetric(m.statsAge, prometheus.GaugeValue, now.Sub(s.at).Seconds(), q)
	}
}

// startRefresh starts a refresh when the cache is stale and none runs, and
// returns the channel closed when the running refresh ends (nil if none).
func (m *Metrics) startRefresh() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refreshing != nil {
		return m.refreshing
	}
	now := m.now()
	if !m.lastStart.IsZero() && now.Sub(m.lastStart) < m.refresh {
		return nil
	}
	m.lastStart = now
	done := make(chan struct{})
	m.refreshing = done
	// The Inspector takes no context; the goroutine outlives a scrape that
	// stops waiting and ends with go-redis's own read timeout at worst.
	go func() {
		defer close(done)
		fresh, err := m.read()
		m.mu.Lock()
		defer m.mu.Unlock()
		for q, s := range fresh {
			m.stats[q] = s
		}
		m.refreshing = nil
		if err != nil {
			m.statErrors.Inc()
		}
	}()
	return done
}

// read reads the sizes of every queue; a queue asynq has never seen counts
// as empty. It returns what it could read and the first error.
func (m *Metrics) read() (map[string]queueStats, error) {
	known, err := m.inspect.Queues()
	if err != nil {
		return nil, err
	}
	out := make(map[string]queueStats, len(m.queues))
	var first error
	for _, q := range m.queues {
		if !slices.Contains(known, q) {
			out[q] = queueStats{at: m.now()}
			continue
		}
		info, err := m.inspect.GetQueueInfo(q)
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		out[q] = queueStats{
			counts: [6]int{info.Pending, info.Active, info.Scheduled, info.Retry, info.Archived, info.Completed},
			at:     m.now(),
		}
	}
	return out, first
}

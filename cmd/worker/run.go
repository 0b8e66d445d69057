package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/cli"
	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/inflight"
	"github.com/certmail/certmail/internal/metrics"
	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/outage"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

// Exit codes, from the conventions every certmail command shares.
const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure
	exitUsage   = cli.ExitUsage
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(ctx, args[1:], stderr, getenv)
	}
	cfg, err := loadConfig(args, stdout, getenv)
	if err != nil {
		return cli.Report(stderr, "worker", err)
	}
	d := deps{stdout: stdout, stderr: stderr}
	if cfg.demo {
		demo, err := startDemo(cfg, &d)
		if err != nil {
			return cli.Report(stderr, "worker", err)
		}
		defer demo.Close()
	}
	return cli.Report(stderr, "worker", serve(ctx, cfg, d))
}

// handlerDrainTimeout bounds the wait, after SHUTDOWN_TIMEOUT, for the
// handlers asynq gave up on to record their interrupted attempts: their
// provider calls are cancelled at once, so this is one attempt record
// (tasks.RecordTimeout) plus a margin.
const handlerDrainTimeout = tasks.RecordTimeout + 5*time.Second

// deps is what the worker runs against besides its settings. A production
// worker sets only the writers; --demo feeds it its embedded Redis, its
// simulators' HTTP clients and its printer (startDemo), tests their hooks.
type deps struct {
	stdout, stderr io.Writer
	// redisURL, when set, replaces REDIS_URL.
	redisURL string
	// httpClients, when set, carry the provider clients' requests.
	httpClients map[providers.Name]*http.Client
	// recorder, when set, wraps the outcome store as the handler's recorder.
	recorder func(tasks.Recorder) tasks.Recorder
	// started, when set, runs once the worker runs.
	started func(ctx context.Context, w *worker)
}

// newLogger masks email addresses in every message and attribute (one
// place, so no call site can forget).
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(redact.NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})))
}

// serve runs the worker until ctx ends, then shuts down cleanly.
func serve(ctx context.Context, cfg *config, d deps) error {
	w, err := newWorker(ctx, cfg, d)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.start(ctx); err != nil {
		return err
	}
	if d.started != nil {
		d.started(ctx, w)
	}
	<-ctx.Done()
	w.stop()
	return nil
}

// worker is the running worker's parts, built by newWorker.
type worker struct {
	cfg      *config
	log      *slog.Logger
	redisURL string
	rdb      redis.UniversalClient
	queues   map[string]int
	dl       *deadletter.Service
	handler  *tasks.Handler
	// servers has one asynq server per queue, each with its provider's
	// concurrency, so that tasks waiting on one provider's limits never
	// hold the slots of the other's.
	servers  []queueServer
	running  atomic.Bool  // every server runs
	httpLn   net.Listener // nil with HTTP_ADDR=off
	httpSrv  *http.Server
	httpAddr string

	closers       []func() error // in the order they were opened
	stopReconcile context.CancelFunc
	reconcileDone chan struct{}
}

// newWorker builds every part of the worker and connects to Redis. Every
// configuration error is reported before anything is connected.
func newWorker(ctx context.Context, cfg *config, d deps) (_ *worker, err error) {
	w := &worker{cfg: cfg, log: newLogger(d.stderr, cfg.logLevel), redisURL: cmp.Or(d.redisURL, cfg.redisURL)}
	redisconn.SetLogger(w.log)
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	clients, err := buildClients(cfg, d.httpClients)
	if err != nil {
		return nil, err
	}
	// Every handler makes its round trips (claim, record) on this client
	// beside asynq's own (dequeue, ack, heartbeats, forwarder): a pool below
	// the concurrency makes handlers queue for a connection.
	pool := cfg.concurrencyOf(providers.OpenSRS) + cfg.concurrencyOf(providers.DigiCert) + poolSpare
	if w.rdb, err = redisconn.ConnectPool(ctx, w.redisURL, 5*time.Second, pool); err != nil {
		return nil, err
	}
	w.closers = append(w.closers, w.rdb.Close)

	resenders := limitClients(cfg, clients, w.rdb, w.log)
	w.queues = tasks.QueuesFor(resenders)
	store := outcome.NewStore(w.rdb, cfg.retention)
	inspector := asynq.NewInspectorFromRedisClient(w.rdb)
	w.closers = append(w.closers, inspector.Close)
	m := metrics.New(inspector, store, tasks.Queues)
	slots, circuits := map[string]metrics.SlotGauge{}, map[string]metrics.CircuitGauge{}
	limiters := map[string]metrics.LimiterGauge{}
	for p, r := range resenders {
		if o, ok := r.(*outage.Resender); ok {
			circuits[string(p)], r = o, o.Unwrap()
		}
		if g, ok := r.(metrics.SlotGauge); ok {
			slots[string(p)] = g
		}
		for r != nil {
			if g, ok := r.(metrics.LimiterGauge); ok {
				limiters[string(p)] = g
			}
			u, ok := r.(interface{ Unwrap() providers.Resender })
			if !ok {
				break
			}
			r = u.Unwrap()
		}
	}
	m.WatchSlots(slots)
	m.WatchLimiters(limiters)
	m.WatchCircuits(circuits)
	w.dl = deadletter.New(w.rdb, store)
	w.closers = append(w.closers, w.dl.Close)

	var recorder tasks.Recorder = store
	if d.recorder != nil {
		recorder = d.recorder(store)
	}
	w.handler = &tasks.Handler{Resenders: resenders, Recorder: recorder, Observer: m, Logger: w.log,
		ProviderTimeout: cfg.providerTimeout, InAttempt: tasks.DefaultInAttempt}
	policy := tasks.DefaultRetryPolicy
	policy.Base, policy.Max, policy.RateLimitWait = cfg.retryBase, cfg.retryMax, cfg.rateLimitWait
	for _, k := range tasks.Kinds() {
		q := k.Queue()
		if _, ok := w.queues[q]; !ok || slices.ContainsFunc(w.servers, func(s queueServer) bool { return s.queue == q }) {
			continue
		}
		n := cfg.concurrencyOf(k.Provider)
		w.servers = append(w.servers, queueServer{queue: q, concurrency: n, srv: asynq.NewServerFromRedisClient(w.rdb, asynq.Config{
			Concurrency:              n,
			Queues:                   map[string]int{q: 1},
			RetryDelayFunc:           policy.RetryDelay,
			IsFailure:                tasks.IsFailure,
			ShutdownTimeout:          cfg.shutdownTimeout,
			Logger:                   asynqLogger{w.log.With("queue", q)},
			LogLevel:                 asynqLevel(cfg.logLevel),
			TaskCheckInterval:        cmp.Or(cfg.taskCheck, taskCheck),
			DelayedTaskCheckInterval: cmp.Or(cfg.delayedTaskCheck, delayedTaskCheck),
		})})
	}

	if cfg.httpAddr == "off" {
		return w, nil
	}
	dash := opsserver.DashboardConfig{User: cfg.dashboardUser, Password: cfg.dashboardPass.Reveal(), NoAuth: cfg.dashboardNoAuth, ReadOnly: cfg.dashboardRO}
	ops, err := opsserver.New(opsserver.Config{
		RedisURL: w.redisURL, Redis: w.rdb, Running: w.running.Load, Metrics: m.Handler(), Dashboard: dash, Logger: w.log,
	})
	if err != nil {
		return nil, err
	}
	w.closers = append(w.closers, func() error { ops.Close(); return nil })
	if w.httpLn, err = net.Listen("tcp", cfg.httpAddr); err != nil {
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", cfg.httpAddr, err)
	}
	w.closers = append(w.closers, w.httpLn.Close)
	w.httpAddr = w.httpLn.Addr().String()
	w.httpSrv = &http.Server{Handler: ops.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return w, nil
}

// start serves HTTP, starts the asynq server and the dead-letter sweep.
func (w *worker) start(ctx context.Context) error {
	if w.httpSrv != nil {
		go func() {
			if err := w.httpSrv.Serve(w.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				w.log.Error("http server stopped", "error", err.Error())
			}
		}()
	}
	concurrency := map[string]int{}
	names := make([]string, 0, len(w.servers))
	for i, s := range w.servers {
		if err := s.srv.Start(w.handler); err != nil {
			for _, started := range w.servers[:i] {
				started.srv.Shutdown()
			}
			return fmt.Errorf("start asynq server of queue %s: %w", s.queue, err)
		}
		concurrency[s.queue] = s.concurrency
		names = append(names, s.queue)
	}
	w.running.Store(true)
	w.log.Info("worker started", "queues", names, "concurrency", concurrency, "http_addr", w.httpAddr,
		"redis", redisconn.Redact(w.redisURL), "retry_base", w.cfg.retryBase.String(), "retry_max", w.cfg.retryMax.String())

	w.reconcileDone = make(chan struct{})
	var rctx context.Context
	rctx, w.stopReconcile = context.WithCancel(ctx)
	go func() {
		defer close(w.reconcileDone)
		reconcileLoop(rctx, w.dl, w.cfg.reconcileEvery, w.cfg.deadRetention, w.log)
	}()
	return nil
}

// stop shuts the worker down: no new tasks, in-flight ones given
// SHUTDOWN_TIMEOUT, then requeued once their interrupted attempts are
// recorded.
func (w *worker) stop() {
	w.log.Info("shutting down: no new tasks; waiting for in-flight tasks", "timeout", w.cfg.shutdownTimeout.String())
	w.running.Store(false)
	w.stopReconcile()
	<-w.reconcileDone
	w.handler.Stopping()
	// Every server stops fetching first, then all shut down at once: one
	// SHUTDOWN_TIMEOUT in all, not one per queue, and no queue keeps
	// fetching while another drains.
	for _, s := range w.servers {
		s.srv.Stop()
	}
	var wg sync.WaitGroup
	for _, s := range w.servers {
		wg.Go(s.srv.Shutdown) // requeues what did not finish within ShutdownTimeout
	}
	wg.Wait()
	// Shutdown returns without waiting for the handlers of the tasks it
	// requeued; it has cancelled them, and they are recording their
	// interrupted attempts (which releases their claims). Redis stays open
	// until they have, or the requeued tasks would wait on stale claims.
	wctx, cancelWait := context.WithTimeout(context.Background(), handlerDrainTimeout)
	if err := w.handler.Wait(wctx); err != nil {
		w.log.Error("shutdown: interrupted attempts not all recorded; their tasks may wait for their claims to expire", "error", err.Error())
	}
	cancelWait()
	if w.httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = w.httpSrv.Shutdown(sctx)
		cancel()
	}
	w.log.Info("worker stopped")
}

// queueServer is the asynq server of one queue.
type queueServer struct {
	queue       string
	concurrency int
	srv         *asynq.Server
}

// close releases what newWorker opened, last opened first.
func (w *worker) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		_ = w.closers[i]()
	}
	w.closers = nil
}

// clients are the configured provider clients, before rate limiting.
type clients struct {
	opensrs  *opensrs.Client
	digicert *digicert.Client
}

// buildClients builds the client of each provider with credentials, each
// with a connection pool as large as its provider's concurrency so that
// concurrent calls reuse connections instead of opening new ones. It
// needs no Redis, so loadConfig runs it too and a bad URL or key is reported
// as a configuration error before anything is connected.
func buildClients(cfg *config, httpClients map[providers.Name]*http.Client) (clients, error) {
	var out clients
	if cfg.opensrsKey != "" {
		opts := []opensrs.Option{
			opensrs.WithBaseURL(cfg.opensrsURL),
			opensrs.WithCredentials(cfg.opensrsUsername, cfg.opensrsKey.Reveal()),
			opensrs.WithTimeout(cfg.providerTimeout),
			opensrs.WithMaxConns(cfg.concurrencyOf(providers.OpenSRS)),
		}
		if hc := httpClients[providers.OpenSRS]; hc != nil {
			opts = append(opts, opensrs.WithHTTPClient(hc))
		}
		c, err := opensrs.New(opts...)
		if err != nil {
			return out, configErrf("OpenSRS configuration (OPENSRS_URL, OPENSRS_USERNAME, OPENSRS_API_KEY): %v", err)
		}
		out.opensrs = c
	}
	if cfg.digicertKey != "" {
		opts := []digicert.Option{
			digicert.WithBaseURL(cfg.digicertURL),
			digicert.WithAPIKey(cfg.digicertKey.Reveal()),
			digicert.WithTimeout(cfg.providerTimeout),
			digicert.WithMaxConns(cfg.concurrencyOf(providers.DigiCert)),
		}
		if hc := httpClients[providers.DigiCert]; hc != nil {
			opts = append(opts, digicert.WithHTTPClient(hc))
		}
		c, err := digicert.New(opts...)
		if err != nil {
			return out, configErrf("DigiCert configuration (DIGICERT_URL, DIGICERT_API_KEY): %v", err)
		}
		out.digicert = c
	}
	return out, nil
}

// taskCheck is how long an idle queue server waits between two looks for a
// new task (asynq has no blocking pop: each look is one dequeue script;
// asynq sleeps between half and one and a half times this). asynq's default
// (1 s) picks a new task up after ~0.5 s (p50) and up to 1.5 s; 200 ms
// brings that to ~100 ms (p50), ~270 ms (p99), for 5 dequeue scripts a
// second per queue on an idle Redis (BENCHMARKS.md, figure 4).
const taskCheck = 200 * time.Millisecond

// poolSpare is the Redis connections beyond the handlers' for asynq's
// own loops, the dead-letter sweep, metrics and readiness.
const poolSpare = 16

// delayedTaskCheck is how often asynq moves due retries back to pending.
// A task the rate limiter sends back is due exactly when its slot frees;
// asynq's default (5 s) would let the slot go unused for up to that long,
// cycle after cycle of a backlog (400 tasks under 20/1s,100/10s took 1.46x
// the fastest legal time). One small script a second per worker. The
// limiter's requeue comes back 1.5 s early to absorb this poll and asynq's
// whole-second scores; TestLimiterRequeueMeetsItsSlot fails if this grows
// past what that lead covers.
const delayedTaskCheck = time.Second

// capInFlight puts a (rate-limited) client behind the fleet-wide in-flight
// cap. The cap is outside the limiter: a call holding a slot may then wait
// for a rate slot, but one waiting for a rate slot never holds a slot.
func capInFlight(next providers.Resender, rdb redis.UniversalClient, cfg *config, p providers.Name, cred string, n int) providers.Resender {
	return inflight.Wrap(next, rdb, inflight.Config{Provider: p, Credential: cred, Cap: n,
		CallLimit: cfg.providerTimeout, MaxWait: inflight.DefaultMaxWait, RetriedInPlace: tasks.DefaultInAttempt.MaxRateLimitWait})
}

// limitClients puts each client behind the rate limiter shared through
// Redis, that behind the in-flight cap (capInFlight), and that behind the
// outage circuit (guardOutage), so a task for a provider that is down holds
// no slot.
func limitClients(cfg *config, c clients, rdb redis.UniversalClient, log *slog.Logger) map[providers.Name]providers.Resender {
	// Waits for a limiter slot up to this long are taken in the attempt;
	// longer ones send the task back to the queue, budget untouched.
	maxWait := tasks.DefaultInAttempt.MaxRateLimitWait
	out := map[providers.Name]providers.Resender{}
	if c.opensrs != nil {
		cred := cfg.opensrsUsername + "\x00" + cfg.opensrsKey.Reveal()
		out[providers.OpenSRS] = guardOutage(capInFlight(ratelimit.Wrap(c.opensrs, rdb, providers.OpenSRS, cred, cfg.opensrsRate, maxWait), rdb, cfg, providers.OpenSRS, cred, cfg.opensrsInFlight), rdb, cfg, providers.OpenSRS, cred, log)
	} else {
		log.Warn("OpenSRS not configured: queue opensrs is not consumed and its tasks wait (set OPENSRS_USERNAME and OPENSRS_API_KEY or OPENSRS_API_KEY_FILE)")
	}
	if c.digicert != nil {
		out[providers.DigiCert] = guardOutage(capInFlight(ratelimit.Wrap(c.digicert, rdb, providers.DigiCert, cfg.digicertKey.Reveal(), cfg.digicertRate, maxWait), rdb, cfg, providers.DigiCert, cfg.digicertKey.Reveal(), cfg.digicertInFlight), rdb, cfg, providers.DigiCert, cfg.digicertKey.Reveal(), log)
	} else {
		log.Warn("DigiCert not configured: queue digicert is not consumed and its tasks wait (set DIGICERT_API_KEY or DIGICERT_API_KEY_FILE)")
	}
	return out
}

// reconcileLoop runs sweep every interval until ctx ends.
func reconcileLoop(ctx context.Context, dl *deadletter.Service, every, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		sweep(ctx, dl, retention, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep records asynq's archive as durable dead letters (tasks that died
// after a crash never pass through the handler), then removes the dead
// letters older than retention (0: none), so Redis stays bounded.
func sweep(ctx context.Context, dl *deadletter.Service, retention time.Duration, log *slog.Logger) {
	n, err := dl.Reconcile(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("dead-letter reconcile failed", "error", err.Error())
	case n > 0:
		log.Warn("dead letters recovered from asynq's archive (died outside the handler, e.g. worker crash)", "count", n)
	}
	n, err = dl.Prune(ctx, retention)
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("dead-letter retention sweep failed", "error", err.Error())
	case n > 0:
		log.Info("dead letters expired (older than DEADLETTER_RETENTION)", "count", n, "retention", retention.String())
	}
}

// healthcheck is for container HEALTHCHECKs on images without curl.
func healthcheck(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	addr := getenv("HTTP_ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	if h, p, err := net.SplitHostPort(addr); err == nil && (h == "" || h == "0.0.0.0" || h == "::") {
		addr = net.JoinHostPort("127.0.0.1", p)
	}
	url := "http://" + addr + "/healthz"
	if len(args) > 0 {
		url = args[0]
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "worker healthcheck: URL: %v\n", err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "worker healthcheck: %v\n", err)
		return exitFailure
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "worker healthcheck: %s answered %s\n", url, resp.Status)
		return exitFailure
	}
	return exitOK
}

// asynqLogger routes asynq's own log lines into the structured log.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }

// Fatal honours asynq's contract: log, then exit 1.
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq", "fatal", true)
	os.Exit(1)
}

func asynqLevel(s string) asynq.LogLevel {
	switch strings.ToLower(s) {
	case "debug":
		return asynq.DebugLevel
	case "warn":
		return asynq.WarnLevel
	case "error":
		return asynq.ErrorLevel
	default:
		return asynq.InfoLevel
	}
}

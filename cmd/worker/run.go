package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/metrics"
	"github.com/certmail/certmail/internal/opsserver"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(ctx, args[1:], stderr, getenv)
	}
	cfg, err := loadConfig(args, stdout, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "worker: %s\n", err)
		return exitUsage
	}
	if err := serve(ctx, cfg, stdout, stderr, nil); err != nil {
		var ce configError
		if errors.As(err, &ce) {
			fmt.Fprintf(stderr, "worker: %s\n", err)
			return exitUsage
		}
		fmt.Fprintf(stderr, "worker: %s\n", strings.Join(strings.Fields(err.Error()), " "))
		return exitFailure
	}
	return exitOK
}

// handlerDrainTimeout bounds the wait, after SHUTDOWN_TIMEOUT, for the
// handlers asynq gave up on to record their interrupted attempts: their
// provider calls are cancelled at once, so this is one attempt record
// (tasks.RecordTimeout) plus a margin.
const handlerDrainTimeout = tasks.RecordTimeout + 5*time.Second

// hooks lets tests observe the running worker.
type hooks struct {
	// started receives the HTTP address, and in demo mode the simulators,
	// once everything runs.
	started func(httpAddr string, demo *demoEnv)
	// recorder, if set, wraps the handler's recorder (e.g. to slow it down).
	recorder func(tasks.Recorder) tasks.Recorder
}

// newLogger masks email addresses in every message and attribute (one
// place, so no call site can forget).
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(redact.NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})))
}

// serve runs the worker until ctx ends, then shuts down cleanly.
func serve(ctx context.Context, cfg *config, stdout, stderr io.Writer, h *hooks) error {
	log := newLogger(stderr, cfg.logLevel)
	redisconn.SetLogger(log)

	var demo *demoEnv
	if cfg.demo {
		var err error
		if demo, err = startDemo(cfg, stdout); err != nil {
			return err
		}
		defer demo.Close()
	}

	// Every configuration error is reported before anything is connected.
	clients, err := buildClients(cfg, demo)
	if err != nil {
		return err
	}
	rdb, err := redisconn.Connect(ctx, cfg.redisURL, 5*time.Second)
	if err != nil {
		return err
	}
	defer rdb.Close()

	resenders := limitClients(cfg, clients, rdb, log)
	queues := tasks.QueuesFor(resenders)

	store := outcome.NewStore(rdb, cfg.retention)
	inspector := asynq.NewInspectorFromRedisClient(rdb)
	defer inspector.Close()
	m := metrics.New(inspector, store, tasks.Queues)
	dl := deadletter.New(rdb, store)
	defer dl.Close()

	var recorder tasks.Recorder = store
	if demo != nil {
		recorder = demo.printer(store)
	}
	if h != nil && h.recorder != nil {
		recorder = h.recorder(recorder)
	}
	handler := &tasks.Handler{
		Resenders:       resenders,
		Recorder:        recorder,
		Observer:        m,
		Logger:          log,
		ProviderTimeout: cfg.providerTimeout,
		InAttempt:       tasks.DefaultInAttempt,
	}
	policy := tasks.RetryPolicy{Base: cfg.retryBase, Max: cfg.retryMax, Jitter: 0.2, RateLimitWait: cfg.rateLimitWait}
	var running atomic.Bool
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.concurrency,
		Queues:                   queues,
		RetryDelayFunc:           policy.RetryDelay,
		IsFailure:                tasks.IsFailure,
		ShutdownTimeout:          cfg.shutdownTimeout,
		Logger:                   asynqLogger{log},
		LogLevel:                 asynqLevel(cfg.logLevel),
		TaskCheckInterval:        cfg.taskCheck,
		DelayedTaskCheckInterval: cfg.delayedTaskCheck,
	})

	var httpSrv *http.Server
	var ops *opsserver.Server
	httpAddr := ""
	if cfg.httpAddr != "off" {
		dash := opsserver.DashboardConfig{User: cfg.dashboardUser, Password: string(cfg.dashboardPass), NoAuth: cfg.dashboardNoAuth, ReadOnly: cfg.dashboardRO}
		ops, err = opsserver.New(opsserver.Config{
			RedisURL: cfg.redisURL, Redis: rdb, Running: running.Load, Metrics: m.Handler(), Dashboard: dash, Logger: log,
		})
		if err != nil {
			return err
		}
		defer ops.Close()
		ln, err := net.Listen("tcp", cfg.httpAddr)
		if err != nil {
			return fmt.Errorf("HTTP_ADDR %s: %w", cfg.httpAddr, err)
		}
		httpAddr = ln.Addr().String()
		httpSrv = &http.Server{Handler: ops.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "error", err.Error())
			}
		}()
	}

	if err := srv.Start(handler); err != nil {
		return fmt.Errorf("start asynq server: %w", err)
	}
	running.Store(true)
	names := make([]string, 0, len(queues))
	for q := range queues {
		names = append(names, q)
	}
	log.Info("worker started", "queues", names, "concurrency", cfg.concurrency, "http_addr", httpAddr,
		"redis", redisconn.Redact(cfg.redisURL), "retry_base", cfg.retryBase.String(), "retry_max", cfg.retryMax.String())

	reconcileDone := make(chan struct{})
	rctx, stopReconcile := context.WithCancel(ctx)
	go func() {
		defer close(reconcileDone)
		reconcileLoop(rctx, dl, cfg.reconcileEvery, cfg.deadRetention, log)
	}()

	if demo != nil {
		if err := demo.enqueueSamples(ctx, rdb, cfg.redisURL, httpAddr, cfg.demoTasks); err != nil {
			log.Error("demo: enqueue samples", "error", err.Error())
		}
	}
	if h != nil && h.started != nil {
		h.started(httpAddr, demo)
	}

	<-ctx.Done()
	log.Info("shutting down: no new tasks; waiting for in-flight tasks", "timeout", cfg.shutdownTimeout.String())
	running.Store(false)
	stopReconcile()
	<-reconcileDone
	handler.Stopping()
	srv.Shutdown() // requeues what did not finish within ShutdownTimeout
	// Shutdown returns without waiting for the handlers of the tasks it
	// requeued; it has cancelled them, and they are recording their
	// interrupted attempts (which releases their claims). Redis stays open
	// until they have, or the requeued tasks would wait on stale claims.
	wctx, cancelWait := context.WithTimeout(context.Background(), handlerDrainTimeout)
	if err := handler.Wait(wctx); err != nil {
		log.Error("shutdown: interrupted attempts not all recorded; their tasks may wait for their claims to expire", "error", err.Error())
	}
	cancelWait()
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = httpSrv.Shutdown(sctx)
		cancel()
	}
	log.Info("worker stopped")
	return nil
}

// clients are the configured provider clients, before rate limiting.
type clients struct {
	opensrs  *opensrs.Client
	digicert *digicert.Client
}

// buildClients builds the client of each provider with credentials, each
// with a connection pool as large as the worker's concurrency so that
// concurrent calls reuse connections instead of opening new ones. It
// needs no Redis, so loadConfig runs it too and a bad URL or key is reported
// as a configuration error before anything is connected.
func buildClients(cfg *config, demo *demoEnv) (clients, error) {
	var out clients
	if cfg.opensrsKey != "" {
		opts := []opensrs.Option{
			opensrs.WithBaseURL(cfg.opensrsURL),
			opensrs.WithCredentials(cfg.opensrsUsername, string(cfg.opensrsKey)),
			opensrs.WithTimeout(cfg.providerTimeout),
			opensrs.WithMaxConns(cfg.concurrency),
		}
		if demo != nil {
			opts = append(opts, opensrs.WithHTTPClient(demo.opensrs.Client()))
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
			digicert.WithAPIKey(string(cfg.digicertKey)),
			digicert.WithTimeout(cfg.providerTimeout),
			digicert.WithMaxConns(cfg.concurrency),
		}
		if demo != nil {
			opts = append(opts, digicert.WithHTTPClient(demo.digicert.Client()))
		}
		c, err := digicert.New(opts...)
		if err != nil {
			return out, configErrf("DigiCert configuration (DIGICERT_URL, DIGICERT_API_KEY): %v", err)
		}
		out.digicert = c
	}
	return out, nil
}

// limitClients puts each client behind the rate limiter shared through Redis.
func limitClients(cfg *config, c clients, rdb redis.UniversalClient, log *slog.Logger) map[providers.Name]providers.Resender {
	// Waits for a limiter slot up to this long are taken in the attempt;
	// longer ones send the task back to the queue, budget untouched.
	maxWait := tasks.DefaultInAttempt.MaxRateLimitWait
	out := map[providers.Name]providers.Resender{}
	if c.opensrs != nil {
		out[providers.OpenSRS] = ratelimit.Wrap(c.opensrs, rdb, providers.OpenSRS, cfg.opensrsUsername+"\x00"+string(cfg.opensrsKey), cfg.opensrsRate, maxWait)
	} else {
		log.Warn("OpenSRS not configured: queue opensrs is not consumed and its tasks wait (set OPENSRS_USERNAME and OPENSRS_API_KEY or OPENSRS_API_KEY_FILE)")
	}
	if c.digicert != nil {
		out[providers.DigiCert] = ratelimit.Wrap(c.digicert, rdb, providers.DigiCert, string(cfg.digicertKey), cfg.digicertRate, maxWait)
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

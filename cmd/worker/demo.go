package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/api"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/httpx"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

// demoEnv is the whole system in one process for a new user with only Go:
// an embedded Redis, both provider simulators (over TLS, verified), and
// sample tasks whose outcomes are printed as they happen.
type demoEnv struct {
	redis    *miniredis.Miniredis
	api      *http.Server // the HTTP enqueue API on loopback, without tokens
	apiSrv   *api.Server
	opensrs  *opensrstest.Server
	digicert *digicerttest.Server
	apiAddr  string
	out      io.Writer
	mu       sync.Mutex
}

// Demo credentials exist only inside this process's simulators.
const (
	demoUser = "demo-reseller"
	demoKey  = "demo-key-not-a-secret"
)

// startDemo starts the simulators (and the embedded Redis unless
// --redis-url was given), points cfg at them with the demo's settings, and
// feeds d: the Redis URL, the HTTP clients that trust the simulators, the
// printer of every attempt and the sample tasks once the worker runs.
func startDemo(cfg *config, d *deps) (*demoEnv, error) {
	demo := &demoEnv{out: d.stdout,
		opensrs:  opensrstest.NewTLSServer(demoUser, demoKey),
		digicert: digicerttest.NewTLSServer(demoKey)}

	// Sample behaviour per order: see enqueueSamples.
	demo.opensrs.SetBehavior("1002", opensrstest.Behavior{TransientFailures: 2})
	demo.opensrs.SetBehavior("1003", opensrstest.Behavior{ErrorCode: 480, ErrorText: "Order not found"})
	demo.opensrs.SetBehavior("1004", opensrstest.Behavior{Delay: 20 * time.Second})
	demo.digicert.SetBehavior("2002", digicerttest.Behavior{RateLimited: 1, RetryAfter: 5 * time.Second})
	demo.digicert.SetBehavior("2003", digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order", ErrorMessage: "Order not found"})

	if !cfg.demoRedis {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			demo.Close()
			return nil, fmt.Errorf("demo: start embedded Redis: %w", err)
		}
		demo.redis = m
		d.redisURL = "redis://" + m.Addr() + "/0"
	}
	d.httpClients = map[providers.Name]*http.Client{providers.OpenSRS: demo.opensrs.Client(), providers.DigiCert: demo.digicert.Client()}
	d.recorder = demo.printer
	d.started = func(ctx context.Context, w *worker) {
		if err := demo.serveAPI(w.rdb); err != nil {
			w.log.Error("demo: serve the HTTP API", "error", err.Error())
		}
		if err := demo.enqueueSamples(ctx, w.rdb, w.redisURL, w.httpAddr, cfg.demoTasks); err != nil {
			w.log.Error("demo: enqueue samples", "error", err.Error())
		}
	}

	cfg.opensrsUsername, cfg.opensrsKey, cfg.opensrsURL = demoUser, demoKey, demo.opensrs.URL()
	cfg.digicertKey, cfg.digicertURL = demoKey, demo.digicert.URL()
	// Fast retries so a new user sees a recovery within seconds.
	cfg.retryBase, cfg.retryMax = time.Second, 4*time.Second
	cfg.delayedTaskCheck = time.Second
	cfg.taskCheck = 200 * time.Millisecond
	cfg.reconcileEvery = 10 * time.Second
	if cfg.dashboardUser == "" {
		if h, _, err := net.SplitHostPort(cfg.httpAddr); err == nil && httpx.IsLoopback(h) {
			cfg.dashboardNoAuth = true
		}
	}
	return demo, nil
}

// demoAPIAddr is where the demo serves the HTTP enqueue API (cmd/api's
// default address); a random loopback port when it is taken.
const demoAPIAddr = "127.0.0.1:8081"

// serveAPI serves the HTTP enqueue API on loopback without tokens (what
// `api --no-auth` allows), on the demo's Redis.
func (d *demoEnv) serveAPI(rdb redis.UniversalClient) error {
	ln, err := net.Listen("tcp", demoAPIAddr)
	if err != nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
	}
	d.apiSrv = api.New(api.Config{Redis: rdb})
	d.api = &http.Server{Handler: d.apiSrv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = d.api.Serve(ln) }()
	d.apiAddr = ln.Addr().String()
	return nil
}

func (d *demoEnv) Close() {
	if d.api != nil {
		_ = d.api.Close()
		_ = d.apiSrv.Close()
	}
	d.opensrs.Close()
	d.digicert.Close()
	if d.redis != nil {
		d.redis.Close()
	}
}

func (d *demoEnv) printf(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, format, args...)
}

func (d *demoEnv) enqueueSamples(ctx context.Context, rdb redis.UniversalClient, redisURL, httpAddr string, samples bool) error {
	d.printf("\ncertmail demo: Redis at %s, provider simulators at %s and %s\n", redisconn.Redact(redisURL), d.opensrs.URL(), d.digicert.URL())
	if httpAddr != "" {
		d.printf("dashboard:  http://%s/dashboard/   metrics: http://%s/metrics\n", httpAddr, httpAddr)
	}
	d.printf("from another terminal:\n  export REDIS_URL=%s\n  go run ./cmd/enqueue opensrs --order-id 1001\n  go run ./cmd/dlq list\n", redisconn.Redact(redisURL))
	if d.apiAddr != "" {
		d.printf("HTTP API (no token on loopback; contract at http://%s/v1/openapi.yaml):\n  curl -sS -H 'Content-Type: application/json' -d '{\"provider\":\"opensrs\",\"order_id\":\"1001\"}' http://%s/v1/resends\n", d.apiAddr, d.apiAddr)
	}
	d.printf("simulated orders: opensrs 1001 ok, 1002 two 503s then ok, 1003 dead (480), 1004 answers after 20s; digicert 2001 ok, 2002 one 429 then ok, 2003 dead (404); any other order ok\n\n")
	if !samples {
		return nil
	}
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	opts := tasks.DefaultOptions()
	opts.MaxRetry = 3
	opts.DedupWindow = 0
	list := []struct {
		p    tasks.Payload
		what string
	}{
		{tasks.NewOpenSRSPayload("1001", "demo-success", false), "succeeds"},
		{tasks.NewOpenSRSPayload("1002", "demo-recovers", false), "fails twice (HTTP 503), then succeeds"},
		{tasks.NewOpenSRSPayload("1003", "demo-dead", false), "permanent error 480, dead-lettered"},
		{&tasks.DigiCertPayload{OrderID: "2001", Locale: "en", Reference: "demo-success",
			DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}}, "succeeds"},
		{&tasks.DigiCertPayload{OrderID: "2002", Reference: "demo-rate-limited"}, "rate-limited once (429, Retry-After 5s), then succeeds"},
		{&tasks.DigiCertPayload{OrderID: "2003", Reference: "demo-dead"}, "404 not_found|order, dead-lettered"},
	}
	for _, s := range list {
		res, err := enq.Enqueue(ctx, s.p, opts)
		if err != nil {
			return err
		}
		d.printf("enqueued %-28s order %s -> %s  (%s)\n", s.p.Type(), s.p.Order(), res.ID, s.what)
	}
	return nil
}

// printer wraps the recorder to print every attempt on stdout.
func (d *demoEnv) printer(r tasks.Recorder) tasks.Recorder { return &demoRecorder{Recorder: r, d: d} }

type demoRecorder struct {
	tasks.Recorder
	d *demoEnv
}

func (p *demoRecorder) Record(ctx context.Context, a outcome.Attempt, dead *outcome.DeadLetter) error {
	err := p.Recorder.Record(ctx, a, dead)
	detail := a.ProviderMessage
	if a.Error != "" {
		detail = a.Error
	}
	if detail == "" && a.HTTPStatus != 0 {
		detail = fmt.Sprintf("HTTP %d", a.HTTPStatus)
	}
	p.d.printf("%s  %-8s order %-5s attempt %d  %-12s %s\n", a.At.Format("15:04:05"), a.Provider, a.OrderID, a.Attempt, a.Outcome, detail)
	return err
}

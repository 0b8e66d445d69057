// Package taskstest runs the real worker path in tests: the real
// tasks.Handler, a fake provider and an asynq server over a test Redis, so
// that attempts, results, dead-letter records and asynq states are the ones
// production writes. It is the one task kit of the suite: the dead-letter,
// enqueue-status and dashboard tests all build their tasks' histories with
// it (deadlettertest is a thin layer over it). The tasks package's own tests
// cannot import it (it imports tasks) and wire the handler themselves.
package taskstest

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/tasks"
)

// ProviderError is a classified provider failure for the fake provider.
type ProviderError struct{ D providers.Detail }

// Error implements error.
func (e *ProviderError) Error() string { return e.D.Message }

// Detail implements providers.DetailedError.
func (e *ProviderError) Detail() providers.Detail { return e.D }

var _ providers.DetailedError = (*ProviderError)(nil)

// Permanent returns a permanent provider error (the task dies at once).
func Permanent(status int, msg string) error {
	return &ProviderError{providers.Detail{Class: providers.Permanent, StatusCode: status, Message: msg}}
}

// Configuration returns a configuration error (the task dies at once).
func Configuration(status int, msg string) error {
	return &ProviderError{providers.Detail{Class: providers.Configuration, StatusCode: status, Message: msg}}
}

// Transient returns a retryable error (the task dies once its budget is spent).
func Transient(status int, msg string) error {
	return &ProviderError{providers.Detail{Class: providers.Transient, StatusCode: status, Message: msg}}
}

// Answers is a fake provider: Errs maps an order ID to the error every
// resend of that order returns; other orders get Default (nil: success).
type Answers struct {
	Errs    map[string]error
	Default error
}

// Resend implements providers.Resender.
func (r Answers) Resend(_ context.Context, req providers.Request) (providers.Result, error) {
	if err, ok := r.Errs[req.OrderID]; ok {
		return providers.Result{}, err
	}
	if r.Default != nil {
		return providers.Result{}, r.Default
	}
	return providers.Result{StatusCode: 200, Message: "resent"}, nil
}

// ResendFunc is a fake provider answering with the function itself.
type ResendFunc func(ctx context.Context, req providers.Request) (providers.Result, error)

// Resend implements providers.Resender.
func (f ResendFunc) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	return f(ctx, req)
}

// Config says how Start wires the worker; the zero value is usable.
type Config struct {
	// Resender answers for both providers; nil is Answers{} (success).
	Resender providers.Resender
	// Retention is the outcome store's retention (0: its default).
	Retention time.Duration
	// Concurrency is asynq's; 0 means 2.
	Concurrency int
	// RetryDelay is the constant delay before asynq retries a failed task;
	// 0 retries at once. The real schedule is tested on its own.
	RetryDelay time.Duration
	// ProviderTimeout and InAttempt are the handler's.
	ProviderTimeout time.Duration
	InAttempt       tasks.InAttempt
}

// Worker is a running asynq server with the real handler.
type Worker struct {
	// Handler is the handler the server runs.
	Handler *tasks.Handler
	// Store is the outcome store the handler records to.
	Store *outcome.Store

	rdb  redis.UniversalClient
	srv  *asynq.Server
	once sync.Once
}

// Start runs the real handler over every queue in tasks.Queues until Stop or
// the end of the test.
func Start(t testing.TB, rdb redis.UniversalClient, cfg Config) *Worker {
	t.Helper()
	fake := cfg.Resender
	if fake == nil {
		fake = Answers{}
	}
	concurrency := cfg.Concurrency
	if concurrency <= 0 {
		concurrency = 2
	}
	store := outcome.NewStore(rdb, cfg.Retention)
	h := &tasks.Handler{
		Resenders:       map[providers.Name]providers.Resender{providers.OpenSRS: fake, providers.DigiCert: fake},
		Recorder:        store,
		Logger:          slog.New(slog.DiscardHandler),
		ProviderTimeout: cfg.ProviderTimeout,
		InAttempt:       cfg.InAttempt,
	}
	queues := make(map[string]int, len(tasks.Queues))
	for _, q := range tasks.Queues {
		queues[q] = 1
	}
	delay := cfg.RetryDelay
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              concurrency,
		Queues:                   queues,
		TaskCheckInterval:        50 * time.Millisecond,
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return delay },
		IsFailure:                tasks.IsFailure,
		Logger:                   nopLogger{},
		ShutdownTimeout:          2 * time.Second,
	})
	if err := srv.Start(h); err != nil {
		t.Fatalf("taskstest: start server: %v", err)
	}
	w := &Worker{Handler: h, Store: store, rdb: rdb, srv: srv}
	t.Cleanup(w.Stop)
	return w
}

// Stop shuts the server down; tasks stay where they are. Stopping twice
// does nothing.
func (w *Worker) Stop() { w.once.Do(w.srv.Shutdown) }

// WaitIdle waits until no task in tasks.Queues is pending, active, scheduled
// or retrying (60 s at most).
func (w *Worker) WaitIdle(t testing.TB) {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(w.rdb)
	defer insp.Close()
	deadline := time.Now().Add(60 * time.Second)
	// Poll slowly once it takes a while: GetQueueInfo samples memory usage
	// in Lua and blocks Redis while it runs.
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		busy := 0
		known, err := insp.Queues()
		if err != nil {
			t.Fatalf("taskstest: queues: %v", err)
		}
		for _, q := range tasks.Queues {
			if !slices.Contains(known, q) {
				continue
			}
			qi, err := insp.GetQueueInfo(q)
			if err != nil {
				t.Fatalf("taskstest: queue info: %v", err)
			}
			busy += qi.Pending + qi.Active + qi.Scheduled + qi.Retry
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("taskstest: %d tasks still live after 60s", busy)
		}
		time.Sleep(wait)
	}
}

// EnqueueN enqueues n tasks, payload(i) for i in [0, n), with opts and
// returns their IDs in order.
func EnqueueN(t testing.TB, rdb redis.UniversalClient, n int, opts tasks.Options, payload func(i int) tasks.Payload) []string {
	t.Helper()
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	ids := make([]string, n)
	for i := range n {
		res, err := enq.Enqueue(t.Context(), payload(i), opts)
		if err != nil {
			t.Fatalf("taskstest: enqueue %d: %v", i, err)
		}
		ids[i] = res.ID
	}
	return ids
}

// RequireSucceededFirstTime fails t unless each of ids has exactly one
// attempt, a success, and no dead letter: nothing sent it back or spent
// its budget.
func (w *Worker) RequireSucceededFirstTime(t testing.TB, ids []string) {
	t.Helper()
	for _, id := range ids {
		as, err := w.Store.Attempts(t.Context(), id)
		if err != nil {
			t.Fatalf("taskstest: attempts of %s: %v", id, err)
		}
		if len(as) != 1 || as[0].Outcome != outcome.Succeeded {
			t.Fatalf("taskstest: task %s: want one successful attempt, got %+v", id, as)
		}
		if _, dead, err := w.Store.DeadLetter(t.Context(), id); err != nil || dead {
			t.Fatalf("taskstest: task %s: dead letter %v (err %v)", id, dead, err)
		}
	}
}

// Drain runs the real handler, with fake as both providers and immediate
// retries, until every task in tasks.Queues is completed or archived, then
// stops the server.
func Drain(t testing.TB, rdb redis.UniversalClient, fake providers.Resender, concurrency int) {
	t.Helper()
	w := Start(t, rdb, Config{Resender: fake, Concurrency: concurrency})
	defer w.Stop()
	w.WaitIdle(t)
}

type nopLogger struct{}

func (nopLogger) Debug(...any) {}
func (nopLogger) Info(...any)  {}
func (nopLogger) Warn(...any)  {}
func (nopLogger) Error(...any) {}
func (nopLogger) Fatal(...any) {}

// Package deadlettertest makes dead letters for tests the way production
// does: the real tasks.Handler runs in an asynq server against a fake
// provider whose answers are chosen per order ID, so the handler writes the
// attempts and dead-letter records and asynq archives the tasks.
package deadlettertest

import (
	"context"
	"log/slog"
	"slices"
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

// Resender is a fake provider: Errs maps an order ID to the error every
// resend of that order returns; other orders get Default (nil: success).
type Resender struct {
	Errs    map[string]error
	Default error
}

// Resend implements providers.Resender.
func (r Resender) Resend(_ context.Context, req providers.Request) (providers.Result, error) {
	if err, ok := r.Errs[req.OrderID]; ok {
		return providers.Result{}, err
	}
	if r.Default != nil {
		return providers.Result{}, r.Default
	}
	return providers.Result{StatusCode: 200, Message: "resent"}, nil
}

// Drain runs the real handler over every task in tasks.Queues, with fake as
// both providers, until no task is pending, active, scheduled or retrying,
// then stops the server. Retries are immediate.
func Drain(t testing.TB, rdb redis.UniversalClient, fake Resender, concurrency int) {
	t.Helper()
	h := &tasks.Handler{
		Resenders: map[providers.Name]providers.Resender{providers.OpenSRS: fake, providers.DigiCert: fake},
		Recorder:  outcome.NewStore(rdb, 0),
		Logger:    slog.New(slog.DiscardHandler),
		InAttempt: tasks.InAttempt{},
	}
	queues := make(map[string]int, len(tasks.Queues))
	for _, q := range tasks.Queues {
		queues[q] = 1
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              concurrency,
		Queues:                   queues,
		TaskCheckInterval:        50 * time.Millisecond,
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return 0 },
		IsFailure:                tasks.IsFailure,
		Logger:                   nopLogger{},
		ShutdownTimeout:          2 * time.Second,
	})
	if err := srv.Start(h); err != nil {
		t.Fatalf("deadlettertest: start server: %v", err)
	}
	defer srv.Shutdown()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()
	deadline := time.Now().Add(60 * time.Second)
	// Poll slowly once it takes a while: GetQueueInfo samples memory usage
	// in Lua and blocks Redis while it runs.
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		busy := 0
		known, err := insp.Queues()
		if err != nil {
			t.Fatalf("deadlettertest: queues: %v", err)
		}
		for _, q := range tasks.Queues {
			if !slices.Contains(known, q) {
				continue
			}
			qi, err := insp.GetQueueInfo(q)
			if err != nil {
				t.Fatalf("deadlettertest: queue info: %v", err)
			}
			busy += qi.Pending + qi.Active + qi.Scheduled + qi.Retry
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deadlettertest: %d tasks still live after 60s", busy)
		}
		time.Sleep(wait)
	}
}

type nopLogger struct{}

func (nopLogger) Debug(...any) {}
func (nopLogger) Info(...any)  {}
func (nopLogger) Warn(...any)  {}
func (nopLogger) Error(...any) {}
func (nopLogger) Fatal(...any) {}

// Package deadlettertest makes dead letters for tests the way production
// does, in the dead-letter tests' words: it is a thin layer over the task
// kit (internal/tasks/taskstest), which runs the real tasks.Handler in an
// asynq server against a fake provider whose answers are chosen per order
// ID, so the handler writes the attempts and dead-letter records and asynq
// archives the tasks.
package deadlettertest

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/tasks/taskstest"
)

// ProviderError is a classified provider failure for the fake provider.
type ProviderError = taskstest.ProviderError

// Resender is the fake provider: Errs maps an order ID to the error every
// resend of that order returns; other orders get Default (nil: success).
type Resender = taskstest.Answers

// Permanent returns a permanent provider error (the task dies at once).
func Permanent(status int, msg string) error { return taskstest.Permanent(status, msg) }

// Configuration returns a configuration error (the task dies at once).
func Configuration(status int, msg string) error { return taskstest.Configuration(status, msg) }

// Transient returns a retryable error (the task dies once its budget is spent).
func Transient(status int, msg string) error { return taskstest.Transient(status, msg) }

// Drain runs the real handler over every task in tasks.Queues, with fake as
// both providers, until no task is pending, active, scheduled or retrying,
// then stops the server. Retries are immediate.
func Drain(t testing.TB, rdb redis.UniversalClient, fake Resender, concurrency int) {
	t.Helper()
	taskstest.Drain(t, rdb, fake, concurrency)
}

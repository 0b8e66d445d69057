// Command dlq inspects, replays and deletes certmail's dead letters: resend
// tasks that failed for good and sit in asynq's archive and in the durable
// dead-letter store (internal/outcome).
//
//	dlq list   [--provider opensrs|digicert] [--since D] [--error-contains S] [--json]
//	dlq show   ID [--json]
//	dlq replay (ID... | --all) [--provider P] [--since D] [--error-contains S] [--dry-run]
//	dlq delete (ID... | --all) [--provider P] [--since D] [--error-contains S]
//
// Every command first reconciles: a task found in asynq's archive without a
// dead-letter record (its worker crashed) gets one, so listings are complete
// even after asynq trimmed its archive. Listings read the records and are
// never capped. Replay enqueues a new task with a fresh retry budget and
// prints "OLD_ID NEW_ID" per task ("OLD_ID -" with --dry-run).
//
// Flags may come before or after the IDs. --redis-url (env REDIS_URL,
// default redis://127.0.0.1:6379/0) accepts redis:// and rediss:// URLs
// with a password, which is never printed.
//
// Exit codes: 0 ok, 1 runtime failure or not found (any ID that failed),
// 2 invalid usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

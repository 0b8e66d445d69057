// Command enqueue is the producer CLI: it validates a resend request, puts
// it into Redis as an asynq task (deduplicated within a window) and prints
// the task ID; `enqueue status` reports a task's state and every attempt.
//
//	enqueue opensrs  --order-id ID [--reference R] [--approve]
//	enqueue digicert --order-id ID [--approval-email DOMAIN=EMAIL]... [--locale L] [--reference R]
//	enqueue batch [FILE|-]
//	enqueue status TASK_ID [--json]
//
// Exit codes: 0 ok, 1 runtime failure (Redis unreachable, task not found, a
// batch line failed, or "may have been enqueued as ID" when Redis failed in
// a way that hides whether the task was created: retrying is safe, `enqueue
// status ID` tells), 2 invalid usage or input (nothing is enqueued).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

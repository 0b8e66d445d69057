// Command worker consumes certmail's resend tasks from Redis and calls
// OpenSRS and DigiCert, retrying transient failures with exponential backoff
// and dead-lettering what cannot succeed. It also serves /healthz, /readyz,
// /metrics and the asynq dashboard on HTTP_ADDR.
//
//	worker [flags]            run against REDIS_URL with the configured providers
//	worker --demo             the whole system in one process (embedded Redis, simulators)
//	worker healthcheck [URL]  exit 0 when the worker's /healthz answers 200 (for containers)
//
// Configuration comes from the environment; flags override it. Run
// `worker --help` for the list.
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

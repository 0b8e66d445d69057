// Command api is the HTTP enqueue API: producers in any language enqueue
// resends with a bearer token (POST /v1/resends, POST /v1/resends:batch)
// and read a task's status (GET /v1/resends/{id}); the contract is
// api/openapi.yaml, served at GET /v1/openapi.yaml. Stateless: it talks only
// to Redis, so any number of replicas can run.
//
//	api [--addr 127.0.0.1:8081] [--redis-url URL] [--tokens-file FILE] [--rate-limit 50/1s] [--no-auth]
//
// Settings come from flags or the environment (API_ADDR, REDIS_URL,
// API_TOKENS_FILE, API_RATE_LIMIT). Without a tokens file the API refuses to
// start, unless --no-auth is given with a loopback address. SIGHUP re-reads
// the tokens file. Exit codes: 0 after a clean shutdown (SIGINT, SIGTERM), 1
// runtime failure, 2 invalid usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv, nil)
	stop()
	os.Exit(code)
}

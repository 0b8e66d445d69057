// Command simulators serves the OpenSRS and DigiCert simulators of
// internal/providers/opensrs/opensrstest and digicerttest as one standalone
// process, so that a worker (a container in the offline compose check, or a
// staging worker on the same host) can be pointed at them:
//
//	simulators [flags]        serve until SIGINT/SIGTERM
//	simulators healthcheck    exit 0 when the admin /healthz answers 200 (for containers)
//
// The simulators speak plain HTTP, which the worker accepts only for loopback
// hosts (internal/providers/httpx), so every address must be a loopback one.
// They accept the credentials the worker is given: OPENSRS_USERNAME,
// OPENSRS_API_KEY[_FILE] and DIGICERT_API_KEY[_FILE] (the same variables as
// the worker's). Orders answer as in `worker --demo`: opensrs 1002 fails twice
// (503) then succeeds, 1003 is refused for good (480); digicert 2002 is
// rate-limited once, 2003 is refused for good (404); every other order succeeds.
//
// The admin address serves GET /healthz and GET /requests, the record of
// every request received (JSON, no credentials or bodies).
//
// Exit codes: 0 stopped cleanly, 1 runtime failure, 2 invalid usage.
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

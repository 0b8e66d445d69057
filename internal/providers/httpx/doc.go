// Package httpx is the one HTTP call path of the provider clients (opensrs,
// digicert), in the spirit of go-github's single Do + CheckResponse: the
// clients keep their wire format (an OPS XML envelope, a JSON body) and their
// error classification, and everything about getting bytes to a provider
// and back lives here:
//
//   - a transport whose connection pool is sized to the worker's concurrency
//     (NewTransport, Config.MaxConns), with 10 s connect and TLS handshake
//     timeouts and a total per-call timeout (Config.Timeout);
//   - TLS verification that is never off: a caller-supplied client that skips
//     it is refused (CheckHTTPClient);
//   - redirects that are never followed, so an API key is never sent to a
//     redirect target;
//   - replies read up to MaxBodySize (1 MiB);
//   - one "was it sent?" rule (Error.NotSent), derived from net/http/httptrace;
//   - base-URL parsing and validation (ParseBaseURL, IsLoopback) whose errors
//     never echo credentials, and the Secret type for API keys.
//
// The provider simulators (opensrstest, digicerttest) deliberately do not use
// this package: a shared mistake here must not be hidden by a simulator that
// makes the same mistake.
package httpx

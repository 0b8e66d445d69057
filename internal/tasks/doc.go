// Package tasks declares certmail's task types — the wire contract between
// the upstream systems that enqueue resends and the workers that perform
// them — and the handler that runs them.
//
// A task type is a constant, its own payload struct with snake_case JSON
// tags whose Type method returns the constant, and one entry in the
// task-type table (kinds.go), from which decoding, the enqueue CLI and
// batch lines, the dead-letter provider filter and the worker's queues are
// all derived. Types are never renamed: a breaking payload change gets a new
// type and both are served until the old drains. Payloads carry identifiers
// only, never a secret.
//
//	type                           queue     payload
//	opensrs:resend_cert_email      opensrs   {"order_id","reference","producer"}
//	opensrs:resend_approve_email   opensrs   {"order_id","reference","producer"}
//	digicert:resend_emails         digicert  {"order_id","domain_approval_emails","locale","reference","producer"}
//
// "producer" is the HTTP API token's name (Options.Producer), set by the
// Enqueuer, never by a request line, and left out of the dedup identity;
// payloads without it (the CLIs', older tasks) are served alike.
//
// # One task through the code
//
//	cmd/enqueue run | cmd/api (internal/api) → Enqueuer.Enqueue (dedup mark) → asynq Client
//	  → Redis: asynq queue opensrs | digicert
//	  → cmd/worker newWorker + worker.start: asynq Server → Handler.ProcessTask
//	  → Decode → Handler.claim → outcome.Store.Claim
//	  → InAttempt.call → outage.Resender.Resend → inflight.Resender.Resend
//	  → ratelimit.Resender.Resend
//	  → opensrs/digicert Client.Resend
//	  → Handler.settle → decide (providers.Describe) → Handler.finish → outcome.Store.Record
//	  → asynq: RetryPolicy.RetryDelay + IsFailure (retry) | SkipRetry (archive)
//	  → dead letter: worker sweep deadletter.Service.Reconcile + Prune;
//	    cmd/dlq → deadletter.Service.Replay | Delete
//
// Step by step:
//
// Enqueue. cmd/enqueue's run parses the flags (runSingle; runBatch for
// JSON Lines) and calls [Enqueuer.Enqueue]. Enqueue validates the payload
// (Payload.Validate), takes the dedup mark (a SET NX on outcome.DedupKey
// that expires with the window and names the new task's random ID; an
// identical request inside the window gets the first ID back) and hands
// the task to asynq's Client.
//
// Redis. The task waits in its provider's asynq queue, opensrs or digicert
// (asynq:{queue}:pending, or :scheduled when delayed; docs/asynq.md §11).
//
// Worker. cmd/worker's newWorker builds the provider clients, wraps each in
// the provider's outage circuit, the fleet-wide in-flight cap and the shared
// rate limiter (limitClients → guardOutage around inflight.Wrap around
// ratelimit.Wrap), and starts one asynq Server per configured provider's
// queue (NewServerFromRedisClient with RetryPolicy.RetryDelay and
// IsFailure, each with its own concurrency), all with one [Handler].
//
// Handle. asynq calls [Handler.ProcessTask], which:
//
//  1. decodes the payload ([Decode]); an invalid one is dead at once;
//  2. claims the call (Handler.claim → outcome.Store.Claim, one script):
//     a success mark means a redelivery of a task already sent, completed
//     without a second email; another delivery's in-flight claim sends
//     this one back to wait for it (docs/asynq.md §2);
//  3. calls the provider through InAttempt.call, which may retry in place
//     only what was never sent and short rate-limit waits
//     (docs/providers.md §2, §3). The call is held back while the
//     provider's outage circuit is open (outage.Resender.Resend: back to
//     the queue with code provider_outage, budget untouched, one probe per
//     interval across the fleet), then takes a slot of the
//     provider credential's in-flight cap (inflight.Resender.Resend: a
//     short wait in place, then back to the queue with code in_flight_cap),
//     then goes through the rate limiter
//     (ratelimit.Resender.Resend: a wait of up to 3 s in place, a longer
//     one comes back as rate-limited without reaching the provider) to the
//     provider client's Resend (opensrs.Client.Resend,
//     digicert.Client.Resend), which makes exactly one HTTP request;
//  4. decides what the answer means (Handler.settle → decide, a pure
//     function: [providers.Describe] gives success, transient,
//     rate_limited, permanent, configuration; docs/providers.md §1 and the
//     tables in docs/opensrs.md §6, docs/digicert.md §4);
//  5. records the attempt (Handler.finish → outcome.Store.RecordWithResult:
//     the attempt list, the outcomes stream, the success mark, the claim's
//     release, a completed task's asynq result, and on every path where
//     asynq will archive, the dead letter, in the same round trip; a
//     success Redis failed to record is retried while Redis comes back,
//     Handler.retrySuccessRecord);
//  6. returns what tells asynq what to do next: nil (completed, result
//     written), a plain error (retry after [RetryPolicy.RetryDelay], budget
//     spent), a [RateLimitError] (retry after its RetryIn; [IsFailure] keeps
//     the budget), or an error wrapping asynq.SkipRetry (archived at once).
//
// Dead letters. A task asynq archives already has its record
// (see internal/rdb) from step 5. Tasks archived without passing through
// the handler (a crashed worker's, by asynq's recoverer) are found by the
// sweep in every worker: worker.start's reconcileLoop → sweep →
// deadletter.Service.Reconcile, then deadletter.Service.Prune expires
// records older than DEADLETTER_RETENTION (docs/asynq.md §5). Operators
// read them with cmd/dlq and replay (deadletter.Service.Replay: a new task
// with a fresh budget) or delete them (deadletter.Service.Delete).
package tasks

// Package rdb is certmail's Redis layer: it owns the name of every key
// certmail writes, every command and every Lua script run on them, the way
// asynq keeps its key names in internal/base and its commands in
// internal/rdb. Other packages call its methods and never build a key; tests
// use its key builders (the functions in keys.go) to look at what it wrote.
// TestNoKeyOrScriptOutsideRDB keeps it so.
//
// The layer works in bytes and scalars: the records it stores (attempts,
// dead letters) are the outcome package's types, encoded there.
//
// # Keys
//
// Every key certmail writes starts with Prefix ("certmail:"; asynq owns
// "asynq:"), so SCAN certmail:* finds them all.
//
//	key                                    type    TTL
//	certmail:attempts:<id>                 list    OUTCOME_RETENTION (7d), renewed by each live attempt;
//	                                               none while the task is dead, given back when the dead
//	                                               letter is replayed, deleted or expired
//	certmail:outcomes                      stream  none: capped (XADD MAXLEN ~, 100,000 entries)
//	certmail:done:{<id>}                   string  OUTCOME_RETENTION: the success mark, RFC 3339 time
//	certmail:inflight:{<id>}               string  the attempt's deadline + 10 s (the handler's lease);
//	                                               released by the record that ends the attempt
//	certmail:dedup:<sha256>                string  the dedup window (10m); "<task id> <unix ms>"
//	certmail:dedup:<sha256>:failed         string  the dedup window: ID of a task whose enqueue failed
//	                                               while its mark could not be released
//	certmail:dead:<id>                     string  none: the dead-letter record (JSON) stays until an
//	                                               operator replays or deletes it or the
//	                                               DEADLETTER_RETENTION sweep removes it, which each
//	                                               tombstone it; an expiry would do neither
//	certmail:dead                          zset    none: the index of dead letters, scored by time of
//	                                               death (ms); members leave with their records
//	certmail:deadclaim:<id>                string  the claim's lease (deadletter.ClaimLease, 1m);
//	                                               "<op>:<token>", then "finished:<op>:<token>" for 10m
//	certmail:tomb:<id>                     string  outcome.TombstoneTTL (24h): "replayed", "deleted"
//	                                               or "expired"
//	certmail:idem:{<sha256>}               string  the HTTP API's Idempotency-Key record of one producer
//	                                               and key (sha256 of both): "pending" JSON for the
//	                                               request's lease (30s), then the stored response and
//	                                               the request's fingerprint for 24h
//	certmail:ratelimit:{<provider>:<h>}:<i>
//	                                       zset    rule i's period (PEXPIRE on each grant): the grant
//	                                               log of rule i (N/period) for the credential whose
//	                                               SHA-256 starts with h (16 hex digits; provider "api":
//	                                               the HTTP API's per-token limit, h of the token's
//	                                               name); members
//	                                               "<server µs>:<random token>", scored by the
//	                                               server time in µs, trimmed to the period on every
//	                                               call, so at most N members: MEMORY USAGE is
//	                                               129 KB for the default 1000/3m log, 5 KB for
//	                                               100/5s (a listpack up to 128 members)
//	certmail:slots:{<provider>:<h>}        zset    the longest live lease: the in-flight cap's holders
//	                                               (tokens) scored by lease expiry (ms, Redis's clock);
//	                                               expired holders are dropped by every acquire
//	certmail:outage:{<provider>:<h>}       hash    none while closed (the success that closes the
//	                                               circuit deletes it); while open 1h or 10 probe
//	                                               intervals, renewed by each failed probe: the
//	                                               outage circuit, "open" (server ms when it
//	                                               opened), "probe_until" (the probe lease, server
//	                                               ms), "probe_token" (its holder)
//	certmail:outage:{<provider>:<h>}:fails zset    OUTAGE_WINDOW: the transient failures since the
//	                                               last success, scored by server ms; at most
//	                                               OUTAGE_THRESHOLD members
//
// Before the sliding-window log the limiter kept GCRA state (redis_rate)
// in strings named certmail:ratelimit:<provider>:<h>:<i>, and before that
// rate:certmail:ratelimit:…; keys of either form left by an older worker
// hold at most one rule period of state and simply expire. A worker of
// that older version running beside a new one keeps its own budget: roll
// the fleet, do not mix versions under a strict provider limit.
//
// Two of asynq's keys are read, never written, and built here too from
// asynq's layout (internal/base/base.go in asynq v0.26.0):
// asynq:{<queue>}:archived (zset of archived task IDs) and
// asynq:{<queue>}:t:<id> (hash of one task, present in every state).
//
// # Hash slots (Redis Cluster)
//
// In a cluster every key a script or transaction touches must hash to one
// slot. Today:
//   - claimScript (done + inflight) and reserveScript (every rule log of one
//     credential) are the multi-key scripts on the hot path; claimScript's
//     keys carry the task ID as hash tag {<id>}, reserveScript's
//     {<provider>:<credential hash>}, so each stays in one slot.
//   - acquireSlotScript touches one key, SlotsKey, hash-tagged with its
//     provider and credential hash.
//   - outageAdmitScript and outageReportScript touch OutageKey and
//     OutageFailsKey, which share the hash tag {<provider>:<credential hash>}.
//   - releaseScript, takeoverScript, repointScript and setIfScript each
//     touch one key (setIfScript: IdempotencyKey, hash-tagged alone).
//   - RecordAttempt is a pipeline, not a transaction: its commands need no
//     slot-mates (a cluster client splits it per node, at the cost of a
//     round trip per node).
//   - addDeadScript (dead, tomb, index, attempts of one ID and the asynq
//     archive of its queue), claimDeadScript (dead, deadclaim, tomb of one
//     ID; asynq task hash, attempts, done, dead, tomb of its successor),
//     renewDeadScript (deadclaim, dead) and finishDeadScript (dead,
//     deadclaim, tomb, index, attempts) cross slots today: the per-ID keys
//     have no hash tag, the index is one key for all IDs, the asynq keys are
//     tagged with the queue and the successor has another ID.
//   - DeadRecords reads many dead:<id> keys with one MGET, which crosses
//     slots too.
//
// Running on a cluster therefore needs the dead-letter keys of one ID
// tagged alike ({<id>}), the index split or kept outside those scripts, and
// the successor and asynq checks done as separate reads; the Cluster issue
// decides how. TestSlots holds this list: a script that moves into one slot,
// or out of it, changes a row there.
package rdb

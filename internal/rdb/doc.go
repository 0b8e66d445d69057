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
//	certmail:attempts:{<id>}               list    OUTCOME_RETENTION (7d), renewed by each live attempt;
//	                                               none while the task is dead, given back when the dead
//	                                               letter is replayed, deleted or expired
//	certmail:outcomes                      stream  none: capped (XADD MAXLEN ~, 100,000 entries)
//	certmail:done:{<id>}                   string  OUTCOME_RETENTION: the success mark, RFC 3339 time
//	certmail:inflight:{<id>}               string  the attempt's deadline + 10 s (the handler's lease);
//	                                               released by the record that ends the attempt
//	certmail:dedup:<sha256>                string  the dedup window (10m); "<task id> <unix ms>"
//	certmail:dedup:<sha256>:failed         string  the dedup window: ID of a task whose enqueue failed
//	                                               while its mark could not be released
//	certmail:dead:{<id>}                   string  none: the dead-letter record (JSON) stays until an
//	                                               operator replays or deletes it or the
//	                                               DEADLETTER_RETENTION sweep removes it, which each
//	                                               tombstone it; an expiry would do neither
//	certmail:dead                          zset    none: the index of dead letters, scored by time of
//	                                               death (ms); members leave with their records (by a
//	                                               command of their own: see Hash slots)
//	certmail:deadclaim:{<id>}              string  the claim's lease (deadletter.ClaimLease, 1m);
//	                                               "<op>:<token>", then "finished:<op>:<token>" for 10m
//	certmail:tomb:{<id>}                   string  outcome.TombstoneTTL (24h): "replayed", "deleted"
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
// Before certmail ran on Redis Cluster the per-task keys attempts, dead,
// deadclaim and tomb had no hash tag (certmail:dead:<id> and so on; done
// and inflight always had one). MigrateLegacy moves such keys to the
// tagged names; deadletter.Service.Reconcile runs it once per process (a
// worker's first sweep, every dlq command).
//
// # Hash slots (Redis Cluster)
//
// In a cluster every key a script or transaction touches must hash to one
// slot, and a script must name every key in KEYS (strict proxies refuse
// names built from ARGV; none here does). Every multi-key script stays in
// one slot:
//   - The keys of one task share the hash tag {<id>}: recordScript
//     (attempts, dead, done, inflight), the claim's pipeline (inflight,
//     then done: their order matters, and commands of one slot run in
//     order on one node), addDeadScript (dead, tomb, attempts, done),
//     claimDeadScript (dead, deadclaim, tomb), renewDeadScript (deadclaim,
//     dead), finishDeadScript (dead, deadclaim, tomb, attempts) and
//     migrateScript (one key's legacy and tagged names: run only when the
//     client is not a cluster client; on a cluster MigrateLegacy moves
//     each key with single-key commands).
//   - The keys of one credential share {<provider>:<credential hash>}:
//     reserveScript (every rule log), acquireSlotScript (SlotsKey),
//     outageAdmitScript and outageReportScript (OutageKey, OutageFailsKey).
//   - releaseScript, takeoverScript, repointScript and setIfScript touch
//     one key (setIfScript: IdempotencyKey, hash-tagged alone).
//
// What used to cross slots is now done by commands of its own:
//   - The dead-letter index certmail:dead is one key for all IDs, in no
//     script. AddDead indexes a record after its script, FinishDead
//     removes the entry after its script, RecordAttempt and DeleteDead
//     write it in their pipelines. A stop between the two leaves a record
//     without entry (listings miss it until Reindex, run by every sweep
//     over asynq's archive and by MigrateLegacy's scan, adds it) or an
//     entry without record (listings skip it, and DropDeadIndex removes it
//     once a tombstone says the letter is finished). Neither can replay or
//     delete a letter twice: claims are taken on the record, never on the
//     index.
//   - AddDead reads asynq's archive (asynq:{<queue>}:archived) with ZSCORE
//     before its script instead of inside it. A task run again from the
//     dashboard between the two and succeeded is caught by the success
//     mark in the script; one replayed or deleted by dlq, by the
//     tombstone; one run again and not yet done gets a record its next
//     attempt removes, as before.
//   - ClaimDead looks for the successor's traces (its asynq hash, and its
//     own tagged keys with one EXISTS) after the claim, in a pipeline: only
//     a holder of the claim enqueues the successor, so whatever an earlier
//     holder enqueued is visible once the claim is won.
//   - Pipelines (RecordAttempt: recordScript, then the index entry and
//     the stream entry; DeleteDead, HasDead, DeadRecords,
//     DeadIndexed, DropDeadIndex, DedupMark) are of single-key commands and
//     EVALs; a cluster client splits them per node (a round trip per node,
//     not one). DeadRecords is per-key GETs, not an MGET.
//   - MigrateLegacy SCANs every master of a cluster.
//
// TestSlots lists each multi-key script's keys and checks they share a
// slot; TestClusterScripts runs every method on a real 3-master cluster.
package rdb

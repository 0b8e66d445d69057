package rdb

import "strconv"

// Prefix starts every key certmail writes (asynq owns "asynq:").
const Prefix = "certmail:"

// Key builders. They are exported for tests, which read what the layer
// wrote; production code outside this package calls methods instead.

// OutcomesKey is the capped stream of every attempt, for ops tools.
const OutcomesKey = Prefix + "outcomes"

// DeadIndexKey is the sorted set of dead-letter IDs scored by time of death.
const DeadIndexKey = Prefix + "dead"

// The keys of one task share the hash tag {<id>}: on a Redis Cluster every
// script that touches several of them stays in one slot.

// AttemptsKey is the list of a task's attempts (JSON), oldest first.
func AttemptsKey(id string) string { return Prefix + "attempts:" + idTag(id) }

// DoneKey is the success mark of a task.
func DoneKey(id string) string { return Prefix + "done:" + idTag(id) }

// InflightKey is the claim of the delivery calling the provider now.
func InflightKey(id string) string { return Prefix + "inflight:" + idTag(id) }

// DeadKey is a task's dead-letter record.
func DeadKey(id string) string { return Prefix + "dead:" + idTag(id) }

// DeadClaimKey holds "op:token" of the operator replaying or deleting the
// dead letter now.
func DeadClaimKey(id string) string { return Prefix + "deadclaim:" + idTag(id) }

// TombKey says what became of a dead letter whose record is gone.
func TombKey(id string) string { return Prefix + "tomb:" + idTag(id) }

// idTag is the hash tag of a task's keys. Task IDs are UUIDs; should one
// hold a brace, every key of the task still has the same first {…}, so they
// still share a slot.
func idTag(id string) string { return "{" + id + "}" }

// Legacy key builders: the names of the untagged per-task keys written by
// certmail before it ran on Redis Cluster. MigrateLegacy moves them to the
// names above; nothing else reads or writes them (tests write them to prove
// the migration).

// LegacyAttemptsKey is AttemptsKey before hash tags.
func LegacyAttemptsKey(id string) string { return Prefix + "attempts:" + id }

// LegacyDeadKey is DeadKey before hash tags.
func LegacyDeadKey(id string) string { return Prefix + "dead:" + id }

// LegacyDeadClaimKey is DeadClaimKey before hash tags.
func LegacyDeadClaimKey(id string) string { return Prefix + "deadclaim:" + id }

// LegacyTombKey is TombKey before hash tags.
func LegacyTombKey(id string) string { return Prefix + "tomb:" + id }

// DedupKey is the enqueue deduplication mark of a request hash.
func DedupKey(hash string) string { return Prefix + "dedup:" + hash }

// DedupFailedKey notes the ID of a task whose enqueue definitely failed
// when its mark could not be released (a Redis user without EVAL, a
// dropped connection): a plain SET, so it works where the release script
// does not.
func DedupFailedKey(hash string) string { return DedupKey(hash) + ":failed" }

// IdempotencyKey is the HTTP API's record of one Idempotency-Key of one
// producer; scope is a SHA-256 of the two (the api package builds it),
// never the key itself. One key, its own hash tag.
func IdempotencyKey(scope string) string { return Prefix + "idem:{" + scope + "}" }

// RateLimitKey is the grant log of rule i for one credential of a provider;
// credHash is a hash of the credential, never the credential. Every rule
// of a credential shares the hash tag {provider:credHash}.
func RateLimitKey(provider, credHash string, rule int) string {
	return Prefix + "ratelimit:" + rateLimitTag(provider, credHash) + ":" + strconv.Itoa(rule)
}

// AsynqArchivedKey is asynq's archive of a queue, a sorted set of task IDs
// (internal/base.ArchivedKey in asynq v0.26.0). Read only.
func AsynqArchivedKey(queue string) string { return "asynq:{" + queue + "}:archived" }

// AsynqTaskKey is asynq's hash of one task (internal/base.TaskKey in asynq
// v0.26.0), present in every state from enqueue until the task is deleted.
// certmail only reads it, and writes its "result" field exactly as asynq's
// ResultWriter does (RecordAttemptWithResult); TestTaskKeyMatchesAsynq
// (internal/tasks) pins it against asynq.
func AsynqTaskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// SlotsKey is the in-flight cap's semaphore for one credential of a
// provider: a sorted set of holder tokens scored by lease expiry (server
// time, ms). credHash is a hash of the credential (CredentialHash), never
// the credential; provider and hash form the hash tag, so the one key a
// semaphore script touches names its own slot.
func SlotsKey(provider, credHash string) string {
	return Prefix + "slots:{" + provider + ":" + credHash + "}"
}

// OutageKey is the outage circuit of one credential of a provider: a hash
// with "open" (server ms when it opened; absent while closed),
// "probe_until" (server ms until which the current probe's lease runs) and
// "probe_token" (the holder of that lease). credHash is CredentialHash of
// the credential; provider and hash form the hash tag it shares with
// OutageFailsKey.
func OutageKey(provider, credHash string) string {
	return Prefix + "outage:{" + provider + ":" + credHash + "}"
}

// OutageFailsKey is the log of recent transient failures of one credential
// (a sorted set scored by server ms), trimmed to the window on each failure
// and deleted by any success.
func OutageFailsKey(provider, credHash string) string {
	return OutageKey(provider, credHash) + ":fails"
}

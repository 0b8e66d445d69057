package rdb

import "github.com/redis/go-redis/v9"

// Every Lua script certmail runs. The hot path's recordScript goes by
// EVALSHA inside its pipeline, falling back to EVAL alone when the server
// answers NOSCRIPT (RecordAttempt); the dead-letter methods send theirs
// with EVAL (one round trip always, also right after a Redis restart); the
// dedup methods use redis.Script.Run, EVALSHA falling back to EVAL.

// releaseScript deletes a claim or mark only if it still holds the caller's
// value: a holder that outlived its lease must not free a newer holder's
// claim, and a failed enqueue never removes another request's dedup mark.
// Used for in-flight claims, dead-letter claims and dedup marks.
//
// KEYS[1] the claim or mark. ARGV[1] the caller's value.
// Returns 1 when deleted, 0 when the key held something else or nothing.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// recordScript writes the task's own part of an attempt's record (every
// key tagged {<id>}) in one step: the history entry, capped and expiring
// unless the task is dead; the dead-letter record written when dead, removed
// otherwise (a task run again from the dashboard keeps its ID, and once it
// runs again it is no longer dead); the success mark; and the release of
// the delivery's in-flight claim. One script instead of six commands: on
// the hot path every command costs the worker a go-redis command object,
// its encoding and its reply (BENCHMARKS.md). The mark is written before
// the claim goes, as ClaimTask relies on; after the mark the claim guards
// nothing, so a success drops it whoever holds it, while any other outcome
// drops it only if it is still this delivery's (a holder that outlived its
// lease must not free a newer holder's claim). RecordAttempt sends the
// dead-letter index entry and the outcomes stream entry (other slots) in
// the same pipeline, after it.
//
// KEYS[1] AttemptsKey, KEYS[2] DeadKey, KEYS[3] DoneKey, KEYS[4]
// InflightKey. ARGV[1] the encoded attempt, ARGV[2] the newest attempts
// kept, as a negative LTRIM start (-N; 0 keeps all), ARGV[3] the retention in ms,
// ARGV[4] the dead-letter record or "", ARGV[5] the success mark or "",
// ARGV[6] the claim token or "". Returns 1.
var recordScript = redis.NewScript(`
redis.call("RPUSH", KEYS[1], ARGV[1])
redis.call("LTRIM", KEYS[1], ARGV[2], -1)
if ARGV[4] ~= "" then
  redis.call("PERSIST", KEYS[1])
  redis.call("SET", KEYS[2], ARGV[4])
else
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
  redis.call("DEL", KEYS[2])
end
if ARGV[5] ~= "" then
  redis.call("SET", KEYS[3], ARGV[5], "PX", ARGV[3])
  if ARGV[6] ~= "" then redis.call("DEL", KEYS[4]) end
elseif ARGV[6] ~= "" and redis.call("GET", KEYS[4]) == ARGV[6] then
  redis.call("DEL", KEYS[4])
end
return 1
`)

// setIfScript replaces a value only if the key still holds the caller's:
// the HTTP API's idempotency record goes from the caller's pending value to
// the stored response, never over a record another request took after the
// caller's lease lapsed.
//
// KEYS[1] the record. ARGV[1] the caller's value, ARGV[2] the new value,
// ARGV[3] its TTL in ms.
// Returns 1 when replaced, 0 when the key held something else or nothing.
var setIfScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 end return 0`)

// addDeadScript adds a dead letter found in asynq's archive, only if there
// is no record yet, no tombstone, and no success mark: a sweep that listed
// the archive just before an operator replayed or deleted the task never
// brings the record back (the tombstone), nor does one that listed it just
// before the task was run again from the dashboard and succeeded (the
// mark). AddDead checks, before it, that the task is still archived (an
// asynq key, in another slot) and indexes the record after it.
//
// KEYS[1] DeadKey, KEYS[2] TombKey, KEYS[3] AttemptsKey, KEYS[4] DoneKey,
// all tagged {<id>}. ARGV[1] the record.
// Returns 1 when added, 0 when a record exists, -1 when tombstoned, -3 when
// the task has a success mark.
var addDeadScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
if redis.call("EXISTS", KEYS[2]) == 1 then return -1 end
if redis.call("EXISTS", KEYS[4]) == 1 then return -3 end
redis.call("SET", KEYS[1], ARGV[1])
redis.call("PERSIST", KEYS[3])
return 1
`)

// claimDeadScript claims a dead letter for one operation, if its record
// still exists and no other caller holds a live claim. Running it twice for
// one caller (a go-redis retry) claims once. ClaimDead looks for the
// successor's traces after it (other slots).
//
// KEYS[1] DeadKey, KEYS[2] DeadClaimKey, KEYS[3] TombKey, tagged {<id>}.
// ARGV[1] the claim value "op:token", ARGV[2] the lease in ms.
// Returns {0, record} when claimed, {1, tombstone or ""} when the record is
// gone, {2, claim value} when another caller holds it.
var claimDeadScript = redis.NewScript(`
local rec = redis.call("GET", KEYS[1])
if not rec then return {1, redis.call("GET", KEYS[3]) or ""} end
local held = redis.call("GET", KEYS[2])
if held and held ~= ARGV[1] and string.sub(held, 1, 9) ~= "finished:" then return {2, held} end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
return {0, rec}
`)

// renewDeadScript extends the caller's dead-letter claim, or takes it again
// if it lapsed and nobody took it meanwhile while the record is still there
// (a lapse alone changed nothing).
//
// KEYS[1] DeadClaimKey, KEYS[2] DeadKey, tagged {<id>}. ARGV[1] the claim
// value, ARGV[2] the lease in ms. Returns 1 when the caller holds the
// claim, else 0.
var renewDeadScript = redis.NewScript(`
local held = redis.call("GET", KEYS[1])
if held == ARGV[1] or (not held and redis.call("EXISTS", KEYS[2]) == 1) then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0
`)

// finishDeadScript removes a dead letter for the claim holder (or a caller
// whose claim lapsed while nobody else took it and the record is still
// there): the record goes, the tombstone comes, the history gets its expiry
// back, in one step. The claim becomes "finished:<claim value>" for a
// while, so that the same call run again (go-redis retries a command whose
// reply timed out) answers 1 again instead of reporting the caller's own
// finish as someone else's. FinishDead removes the index entry after it
// (another slot).
//
// KEYS[1] DeadKey, KEYS[2] DeadClaimKey, KEYS[3] TombKey, KEYS[4]
// AttemptsKey, tagged {<id>}. ARGV[1] the claim value, ARGV[2] the
// tombstone, ARGV[3] the tombstone's TTL in ms, ARGV[4] the history's
// retention in s, ARGV[5] the finished mark's TTL in ms. Returns 1 when
// finished (now or by this very call before), else 0.
var finishDeadScript = redis.NewScript(`
local held = redis.call("GET", KEYS[2])
if held == "finished:" .. ARGV[1] then return 1 end
if held ~= ARGV[1] and (held or redis.call("EXISTS", KEYS[1]) == 0) then return 0 end
redis.call("DEL", KEYS[1])
redis.call("SET", KEYS[2], "finished:" .. ARGV[1], "PX", ARGV[5])
redis.call("SET", KEYS[3], ARGV[2], "PX", ARGV[3])
redis.call("EXPIRE", KEYS[4], ARGV[4])
return 1
`)

// migrateScript moves one key from its legacy name to its tagged name, on a
// Redis that is not a cluster (both names in one script; a cluster puts
// them in different slots and MigrateLegacy moves them step by step). A
// string moves unless the new name exists already (then the new one, written
// by this version, wins); a list (a history) is put in front of the new
// one. The expiry is kept; a history without one (its task is dead) stays
// without.
//
// KEYS[1] the legacy name, KEYS[2] the new name. Returns 1 when moved, 0
// when the legacy key is gone, -1 for a type it does not know (left alone).
var migrateScript = redis.NewScript(`
local t = redis.call("TYPE", KEYS[1])
if type(t) == "table" then t = t["ok"] end
if t == "none" then return 0 end
local ttl = redis.call("PTTL", KEYS[1])
if t == "string" then
  if redis.call("EXISTS", KEYS[2]) == 0 then
    redis.call("SET", KEYS[2], redis.call("GET", KEYS[1]))
    if ttl > 0 then redis.call("PEXPIRE", KEYS[2], ttl) end
  end
elseif t == "list" then
  local newttl = redis.call("PTTL", KEYS[2])
  local v = redis.call("LRANGE", KEYS[1], 0, -1)
  for i = #v, 1, -1 do redis.call("LPUSH", KEYS[2], v[i]) end
  if ttl == -1 or newttl == -1 then
    redis.call("PERSIST", KEYS[2])
  elseif ttl > newttl then
    redis.call("PEXPIRE", KEYS[2], ttl)
  end
else
  return -1
end
redis.call("DEL", KEYS[1])
return 1
`)

// takeoverScript replaces a dedup mark only if it still holds the value
// read, so of several requests taking over one stale mark exactly one wins.
//
// KEYS[1] DedupKey. ARGV[1] the value read, ARGV[2] the new value, ARGV[3]
// the window in ms. Returns 1 when replaced, else 0.
var takeoverScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 end return 0`)

// repointScript moves a dedup mark to a replayed task, keeping its expiry.
//
// KEYS[1] DedupKey. ARGV[1] the value read, ARGV[2] the new value.
// Returns 1 when moved, else 0.
var repointScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2], "KEEPTTL") return 1 end return 0`)

// reserveScript grants one request slot under every rate-limit rule of a
// credential, or under none, so that a refusal by one rule never spends a
// slot of another. Each rule N/period is a sliding-window log: a sorted set
// of grant times (µs), trimmed to the window. A grant at now is made only
// when every rule holds fewer than N grants in (now - period, now], so no
// rolling window of a rule's length ever holds more than N (a GCRA with a
// burst of N lets up to twice that through). Time is the Redis server's, so
// worker clocks do not matter; numbers leave Lua through "%.0f" because a
// Lua number turned into a string keeps only 14 digits, and a time in µs
// has 16.
//
// KEYS[i] RateLimitKey of rule i (one hash tag). ARGV[1] a random token
// that makes the member unique; ARGV[2i], ARGV[2i+1] rule i's N and period
// in µs. Returns {0, 0, now} when granted, else {wait, index of the rule
// that imposed it (0-based), now}: wait is the time until the grant that
// blocks the strictest refusing rule leaves its window; times in µs, now
// the server time of the decision.
var reserveScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, worst = 0, 0
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[2 * i])
  local per = tonumber(ARGV[2 * i + 1])
  redis.call("ZREMRANGEBYSCORE", key, "-inf", string.format("%.0f", now - per))
  local count = redis.call("ZCARD", key)
  if count >= n then
    local e = redis.call("ZRANGE", key, count - n, count - n, "WITHSCORES")
    local w = tonumber(e[2]) + per - now
    if w < 1 then w = 1 end
    if w > wait then wait, worst = w, i - 1 end
  end
end
local score = string.format("%.0f", now)
if wait > 0 then return {wait, worst, score} end
local member = score .. ":" .. ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call("ZADD", key, score, member)
  redis.call("PEXPIRE", key, math.ceil(tonumber(ARGV[2 * i + 1]) / 1000))
end
return {0, 0, score}
`)

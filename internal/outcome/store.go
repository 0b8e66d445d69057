package outcome

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for a Store.
const (
	DefaultRetention    = 7 * 24 * time.Hour
	DefaultStreamMaxLen = 100_000
	// MaxAttemptsKept bounds one task's attempt history: rate-limit bounces
	// do not spend the retry budget, so without a cap a task bouncing for
	// days would grow its list without end. The newest attempts are kept
	// (each carries its own attempt number, so a gap is visible).
	MaxAttemptsKept = 100
)

// Store writes and reads attempts and dead letters in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention time.Duration
	streamMax int64
}

// NewStore returns a Store. retention is how long attempt histories and
// success marks of live tasks are kept (0 means DefaultRetention).
func NewStore(rdb redis.UniversalClient, retention time.Duration) *Store {
	if retention <= 0 {
		retention = DefaultRetention
	}
	return &Store{rdb: rdb, retention: retention, streamMax: DefaultStreamMaxLen}
}

// Record writes one attempt, and the dead-letter record when the attempt
// ended the task, in a single pipelined round trip.
//
// A non-dead attempt also removes any dead-letter record of the same task:
// a task replayed from the dashboard keeps its ID, and once it runs again it
// is no longer dead.
func (s *Store) Record(ctx context.Context, a Attempt, dead *DeadLetter) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("outcome: encode attempt: %w", err)
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		key := attemptsKey(a.TaskID)
		p.RPush(ctx, key, b)
		p.LTrim(ctx, key, -MaxAttemptsKept, -1)
		if dead != nil {
			db, err := json.Marshal(dead)
			if err != nil {
				return fmt.Errorf("outcome: encode dead letter: %w", err)
			}
			p.Persist(ctx, key)
			p.Set(ctx, deadKey(a.TaskID), db, 0)
			p.ZAdd(ctx, deadIndexKey, redis.Z{Score: float64(dead.LastFailedAt.UnixMilli()), Member: a.TaskID})
		} else {
			p.Expire(ctx, key, s.retention)
			p.Del(ctx, deadKey(a.TaskID))
			p.ZRem(ctx, deadIndexKey, a.TaskID)
		}
		if a.Outcome == Succeeded {
			p.Set(ctx, doneKey(a.TaskID), a.At.UTC().Format(time.RFC3339Nano), s.retention)
		}
		if a.Claim != "" {
			p.Eval(ctx, releaseScript, []string{inflightKey(a.TaskID)}, a.Claim)
		}
		p.XAdd(ctx, &redis.XAddArgs{
			Stream: streamKey,
			MaxLen: s.streamMax,
			Approx: true,
			Values: []any{"task_id", a.TaskID, "outcome", string(a.Outcome), "attempt", b},
		})
		return nil
	})
	if err != nil {
		return fmt.Errorf("outcome: record attempt: %w", err)
	}
	return nil
}

// ClaimState is the answer of Claim.
type ClaimState int

// Claim answers.
const (
	// Claimed: this delivery may call the provider.
	Claimed ClaimState = iota
	// AlreadySucceeded: an earlier delivery succeeded; do not call again.
	AlreadySucceeded
	// InFlight: another delivery of the same task is calling the provider
	// right now (asynq redelivered it after a lease expiry or a timeout).
	InFlight
)

// claimScript: done mark first, then SET NX of the in-flight claim.
// KEYS: done, inflight. ARGV: token, ttl ms. Returns {state, info} where
// info is the success time or the claim's remaining ttl in ms.
const claimScript = `
local done = redis.call("GET", KEYS[1])
if done then return {1, done} end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then return {0, ""} end
return {2, tostring(redis.call("PTTL", KEYS[2]))}
`

// releaseScript deletes the claim only if it is still ours: a delivery that
// outlived its claim must not free a newer delivery's claim.
const releaseScript = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`

// Claim checks the task's success mark and, if there is none, claims the
// right to call the provider for ttl, in one round trip. token identifies
// this delivery; Record with Attempt.Claim set to it releases the claim.
// The time returned is when the task succeeded (AlreadySucceeded) or how long
// the other delivery's claim still holds (InFlight, as a duration from now).
func (s *Store) Claim(ctx context.Context, taskID, token string, ttl time.Duration) (ClaimState, time.Time, time.Duration, error) {
	res, err := s.rdb.Eval(ctx, claimScript, []string{doneKey(taskID), inflightKey(taskID)}, token, max(ttl.Milliseconds(), 1)).Slice()
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("outcome: claim task: %w", err)
	}
	if len(res) != 2 {
		return 0, time.Time{}, 0, fmt.Errorf("outcome: claim task: unexpected reply %v", res)
	}
	state, _ := res[0].(int64)
	info, _ := res[1].(string)
	switch ClaimState(state) {
	case AlreadySucceeded:
		at, _ := time.Parse(time.RFC3339Nano, info)
		return AlreadySucceeded, at, 0, nil
	case InFlight:
		ms, _ := strconv.ParseInt(info, 10, 64)
		return InFlight, time.Time{}, time.Duration(max(ms, 0)) * time.Millisecond, nil
	default:
		return Claimed, time.Time{}, 0, nil
	}
}

// SucceededAt reports whether the task already succeeded (its idempotency
// mark exists), and when.
func (s *Store) SucceededAt(ctx context.Context, taskID string) (time.Time, bool, error) {
	v, err := s.rdb.Get(ctx, doneKey(taskID)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("outcome: read success mark: %w", err)
	}
	at, _ := time.Parse(time.RFC3339Nano, v)
	return at, true, nil
}

// Attempts returns the recorded attempts of a task, oldest first.
func (s *Store) Attempts(ctx context.Context, taskID string) ([]Attempt, error) {
	raw, err := s.rdb.LRange(ctx, attemptsKey(taskID), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("outcome: read attempts: %w", err)
	}
	out := make([]Attempt, 0, len(raw))
	for _, r := range raw {
		var a Attempt
		if err := json.Unmarshal([]byte(r), &a); err != nil {
			return nil, fmt.Errorf("outcome: decode attempt of %s: %w", taskID, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// AddDead records a dead letter found in asynq's archive, and reports
// whether it added one. The reconciler uses it for tasks that died without
// passing through the handler (worker crash, lease expiry).
//
// One script decides and writes, so that nothing can slip between the check
// and the write: it adds the record only if there is none, no tombstone
// says the dead letter was replayed or deleted, and the task is still in its
// queue's archive. A sweep that listed the archive just before an operator
// replayed or deleted the task therefore never brings the record back.
func (s *Store) AddDead(ctx context.Context, d DeadLetter) (bool, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("outcome: encode dead letter: %w", err)
	}
	n, err := s.rdb.Eval(ctx, addDeadScript,
		[]string{deadKey(d.ID), tombKey(d.ID), deadIndexKey, attemptsKey(d.ID), asynqArchivedKey(d.Queue)},
		b, d.LastFailedAt.UnixMilli(), d.ID).Int()
	if err != nil {
		return false, fmt.Errorf("outcome: add dead letter: %w", err)
	}
	return n == 1, nil
}

// addDeadScript: KEYS dead, tomb, index, attempts, asynq archive of the
// queue. ARGV record, score, id. Returns 1 when added, 0 when a record
// exists, -1 when tombstoned, -2 when the task is no longer archived.
const addDeadScript = `
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
if redis.call("EXISTS", KEYS[2]) == 1 then return -1 end
if not redis.call("ZSCORE", KEYS[5], ARGV[3]) then return -2 end
redis.call("SET", KEYS[1], ARGV[1])
redis.call("ZADD", KEYS[3], "NX", ARGV[2], ARGV[3])
redis.call("PERSIST", KEYS[4])
return 1
`

// TombstoneTTL is how long a tombstone says what became of a dead letter.
// The sweep (every RECONCILE_INTERVAL, 1m by default) cannot bring back a
// task that is no longer archived anyway; the tombstone also covers a
// sweep that reads the archive before the task leaves it and writes after
// the record is gone, and tells a late operator who handled the letter. A
// day is far above any sweep interval and still tells an operator coming
// back the next morning.
const TombstoneTTL = 24 * time.Hour

// DeadOp is what an operator does to a dead letter; its value is what the
// tombstone says afterwards.
type DeadOp string

// Dead-letter operations.
const (
	OpReplay DeadOp = "replayed"
	OpDelete DeadOp = "deleted"
	// OpExpire is a delete by the retention sweep (DEADLETTER_RETENTION),
	// not by an operator.
	OpExpire DeadOp = "expired"
)

// Successor names the task a replay of a dead letter creates (or created).
// Its ID is derived from the dead letter's, so every replay of one dead
// letter, interrupted or concurrent, aims at the same task.
type Successor struct {
	Queue string
	ID    string
}

// DeadClaim is the answer of ClaimDead.
type DeadClaim struct {
	// Won: the caller holds the claim until FinishDead, ReleaseDead or the
	// lease runs out.
	Won bool
	// Record is the dead letter as it is now (Won only).
	Record DeadLetter
	// SuccessorSeen: the successor task exists in asynq or has left traces
	// (attempts, success mark, its own dead letter or tombstone), so an
	// earlier, interrupted replay already enqueued it (Won only).
	SuccessorSeen bool
	// Tombstone is what became of a dead letter whose record is gone ("" when
	// there is no tombstone: never existed, running again after the
	// dashboard's Run, or tombstone expired). Set when !Won and HeldBy == "".
	Tombstone DeadOp
	// HeldBy is the operation of another caller's live claim (!Won only).
	HeldBy DeadOp
}

// claimDeadScript. KEYS: dead, claim, tomb of the dead letter; then of the
// successor: asynq task hash, attempts, done mark, dead, tomb. ARGV: claim
// value "op:token", lease ms. Returns {0, record, seen} when claimed,
// {1, tombstone or ""} when the record is gone, {2, claim value} when held.
// Running it twice for one caller (a go-redis retry) claims once.
const claimDeadScript = `
local rec = redis.call("GET", KEYS[1])
if not rec then return {1, redis.call("GET", KEYS[3]) or ""} end
local held = redis.call("GET", KEYS[2])
if held and held ~= ARGV[1] and string.sub(held, 1, 9) ~= "finished:" then return {2, held} end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
local seen = 0
for i = 4, 8 do
  if redis.call("EXISTS", KEYS[i]) == 1 then seen = 1 end
end
return {0, rec, seen}
`

// renewDeadScript. KEYS: claim, dead. ARGV: claim value, lease ms. It
// extends the caller's claim, or takes it again if it lapsed and nobody
// took it meanwhile while the record is still there (a lapse alone changed
// nothing).
const renewDeadScript = `
local held = redis.call("GET", KEYS[1])
if held == ARGV[1] or (not held and redis.call("EXISTS", KEYS[2]) == 1) then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0
`

// finishDeadScript. KEYS: dead, claim, tomb, index, attempts. ARGV: claim
// value, tombstone, tombstone ttl ms, attempts retention s, id, finished
// mark ttl ms. Only the claim holder finishes (or a caller whose claim
// lapsed while nobody else took it and the record is still there): record
// and index entry go, the tombstone comes, in one step. The claim becomes
// "finished:<claim value>" for a while, so that the same call run again
// (go-redis retries a command whose reply timed out) answers 1 again
// instead of reporting the caller's own finish as someone else's.
const finishDeadScript = `
local held = redis.call("GET", KEYS[2])
if held == "finished:" .. ARGV[1] then return 1 end
if held ~= ARGV[1] and (held or redis.call("EXISTS", KEYS[1]) == 0) then return 0 end
redis.call("DEL", KEYS[1])
redis.call("SET", KEYS[2], "finished:" .. ARGV[1], "PX", ARGV[6])
redis.call("ZREM", KEYS[4], ARGV[5])
redis.call("SET", KEYS[3], ARGV[2], "PX", ARGV[3])
redis.call("EXPIRE", KEYS[5], ARGV[4])
return 1
`

// finishedMarkTTL is how long a finished claim answers a repeated finish;
// go-redis retries within seconds.
const finishedMarkTTL = 10 * time.Minute

func claimValue(op DeadOp, token string) string { return string(op) + ":" + token }

// ClaimDead claims dead letter id for op, in one script: it succeeds only if
// the record still exists and no other caller holds a live claim on it.
// token identifies the caller (unique per call); the claim expires after
// lease, so a caller that crashes leaves the dead letter replayable by the
// next one. The claim also reports whether succ, the task a replay creates,
// already exists or existed (see DeadClaim.SuccessorSeen).
func (s *Store) ClaimDead(ctx context.Context, id string, op DeadOp, token string, lease time.Duration, succ Successor) (DeadClaim, error) {
	keys := []string{deadKey(id), deadClaimKey(id), tombKey(id),
		asynqTaskKey(succ.Queue, succ.ID), attemptsKey(succ.ID), doneKey(succ.ID), deadKey(succ.ID), tombKey(succ.ID)}
	res, err := s.rdb.Eval(ctx, claimDeadScript, keys, claimValue(op, token), max(lease.Milliseconds(), 1)).Slice()
	if err != nil {
		return DeadClaim{}, fmt.Errorf("outcome: claim dead letter: %w", err)
	}
	if len(res) < 2 {
		return DeadClaim{}, fmt.Errorf("outcome: claim dead letter: unexpected reply %v", res)
	}
	state, _ := res[0].(int64)
	info, _ := res[1].(string)
	switch state {
	case 0:
		var d DeadLetter
		if err := json.Unmarshal([]byte(info), &d); err != nil {
			return DeadClaim{}, fmt.Errorf("outcome: decode dead letter %s: %w", id, err)
		}
		seen := len(res) > 2 && res[2] == int64(1)
		return DeadClaim{Won: true, Record: d, SuccessorSeen: seen}, nil
	case 1:
		return DeadClaim{Tombstone: DeadOp(info)}, nil
	default:
		op, _, _ := strings.Cut(info, ":")
		return DeadClaim{HeldBy: DeadOp(op)}, nil
	}
}

// RenewDead extends a claim for another lease and reports whether the
// caller still holds it (a claim that lapsed is taken again if nobody else
// took it and the record is still there). Callers renew right before a side
// effect that must not happen once the claim has passed to someone else.
func (s *Store) RenewDead(ctx context.Context, id string, op DeadOp, token string, lease time.Duration) (bool, error) {
	n, err := s.rdb.Eval(ctx, renewDeadScript, []string{deadClaimKey(id), deadKey(id)}, claimValue(op, token), max(lease.Milliseconds(), 1)).Int()
	if err != nil {
		return false, fmt.Errorf("outcome: renew dead-letter claim: %w", err)
	}
	return n == 1, nil
}

// FinishDead ends a claim by removing the dead letter: record and index
// entry are deleted and a tombstone saying tomb is written (TombstoneTTL),
// in one script, only if the caller still holds the claim, or its claim
// lapsed but nobody else took it and the record is still there (it reports
// whether it finished). The attempt history then expires with the retention.
func (s *Store) FinishDead(ctx context.Context, id string, op DeadOp, token string, tomb DeadOp) (bool, error) {
	n, err := s.rdb.Eval(ctx, finishDeadScript,
		[]string{deadKey(id), deadClaimKey(id), tombKey(id), deadIndexKey, attemptsKey(id)},
		claimValue(op, token), string(tomb), TombstoneTTL.Milliseconds(), int64(s.retention/time.Second), id,
		finishedMarkTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("outcome: finish dead letter: %w", err)
	}
	return n == 1, nil
}

// ReleaseDead gives a claim up, leaving the dead letter as it was: the
// caller refused it or failed before changing anything for good.
func (s *Store) ReleaseDead(ctx context.Context, id string, op DeadOp, token string) error {
	if err := s.rdb.Eval(ctx, releaseScript, []string{deadClaimKey(id)}, claimValue(op, token)).Err(); err != nil {
		return fmt.Errorf("outcome: release dead-letter claim: %w", err)
	}
	return nil
}

// Tombstone returns what became of a dead letter whose record is gone, or
// "" when no tombstone (or one that expired) says.
func (s *Store) Tombstone(ctx context.Context, id string) (DeadOp, error) {
	v, err := s.rdb.Get(ctx, tombKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("outcome: read tombstone: %w", err)
	}
	return DeadOp(v), nil
}

// HasDead reports, for each id, whether a dead-letter record exists.
func (s *Store) HasDead(ctx context.Context, ids []string) ([]bool, error) {
	out := make([]bool, len(ids))
	const chunk = 1000
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		cmds := make([]*redis.IntCmd, 0, hi-lo)
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids[lo:hi] {
				cmds = append(cmds, p.Exists(ctx, deadKey(id)))
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("outcome: check dead letters: %w", err)
		}
		for i, c := range cmds {
			out[lo+i] = c.Val() > 0
		}
	}
	return out, nil
}

// DeadLetters returns every dead letter, oldest death first. It never pages
// or caps: callers filter.
func (s *Store) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	ids, err := s.rdb.ZRange(ctx, deadIndexKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("outcome: list dead letters: %w", err)
	}
	return s.deadLetters(ctx, ids)
}

// DeadLettersBefore returns every dead letter that died before t, oldest
// first, reading only those (the index is scored by time of death): the
// retention sweep runs it every RECONCILE_INTERVAL.
func (s *Store) DeadLettersBefore(ctx context.Context, t time.Time) ([]DeadLetter, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, deadIndexKey, &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(t.UnixMilli(), 10),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("outcome: list dead letters: %w", err)
	}
	return s.deadLetters(ctx, ids)
}

func (s *Store) deadLetters(ctx context.Context, ids []string) ([]DeadLetter, error) {
	out := make([]DeadLetter, 0, len(ids))
	const chunk = 1000
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		keys := make([]string, 0, hi-lo)
		for _, id := range ids[lo:hi] {
			keys = append(keys, deadKey(id))
		}
		vals, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("outcome: read dead letters: %w", err)
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok { // index entry without record: deleted concurrently
				continue
			}
			var d DeadLetter
			if err := json.Unmarshal([]byte(str), &d); err != nil {
				return nil, fmt.Errorf("outcome: decode dead letter %s: %w", ids[lo+i], err)
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// DeadLetter returns one dead letter.
func (s *Store) DeadLetter(ctx context.Context, id string) (DeadLetter, bool, error) {
	v, err := s.rdb.Get(ctx, deadKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return DeadLetter{}, false, nil
	}
	if err != nil {
		return DeadLetter{}, false, fmt.Errorf("outcome: read dead letter: %w", err)
	}
	var d DeadLetter
	if err := json.Unmarshal([]byte(v), &d); err != nil {
		return DeadLetter{}, false, fmt.Errorf("outcome: decode dead letter %s: %w", id, err)
	}
	return d, true, nil
}

// DeleteDead removes dead-letter records. Their attempt histories are kept
// for the retention window, so a replayed task's past can still be read.
// It neither claims nor tombstones: dlq replay and delete use ClaimDead and
// FinishDead, which are safe against each other and against the sweep.
func (s *Store) DeleteDead(ctx context.Context, ids ...string) error {
	const chunk = 1000
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			members := make([]any, 0, hi-lo)
			for _, id := range ids[lo:hi] {
				p.Del(ctx, deadKey(id))
				p.Expire(ctx, attemptsKey(id), s.retention)
				members = append(members, id)
			}
			p.ZRem(ctx, deadIndexKey, members...)
			return nil
		})
		if err != nil {
			return fmt.Errorf("outcome: delete dead letters: %w", err)
		}
	}
	return nil
}

// CountDead returns the number of dead letters (one ZCARD, cheap enough for
// every metrics scrape).
func (s *Store) CountDead(ctx context.Context) (int64, error) {
	n, err := s.rdb.ZCard(ctx, deadIndexKey).Result()
	if err != nil {
		return 0, fmt.Errorf("outcome: count dead letters: %w", err)
	}
	return n, nil
}

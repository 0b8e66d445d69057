package outcome

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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

// AddDead records a dead letter unless one exists for the task; it reports
// whether it added one. The reconciler uses it for tasks that died without
// passing through the handler (worker crash, lease expiry).
func (s *Store) AddDead(ctx context.Context, d DeadLetter) (bool, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("outcome: encode dead letter: %w", err)
	}
	var set *redis.BoolCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		set = p.SetNX(ctx, deadKey(d.ID), b, 0)
		p.ZAddNX(ctx, deadIndexKey, redis.Z{Score: float64(d.LastFailedAt.UnixMilli()), Member: d.ID})
		p.Persist(ctx, attemptsKey(d.ID))
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("outcome: add dead letter: %w", err)
	}
	return set.Val(), nil
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

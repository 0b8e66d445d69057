package rdb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client runs certmail's commands and scripts on one go-redis client, which
// it shares with asynq. It is safe for concurrent use.
type Client struct {
	c redis.UniversalClient
}

// New returns a Client on c. Its pipelines, the hot path's claim and
// record among them, are coalesced with those of concurrent callers
// (coalesce.go).
func New(c redis.UniversalClient) *Client { return &Client{c: coalesce(c)} }

// raw is the go-redis client under the coalescing wrapper.
func (r *Client) raw() redis.UniversalClient {
	if c, ok := r.c.(*coalescing); ok {
		return c.UniversalClient
	}
	return r.c
}

// ms is a lease or TTL in whole milliseconds, at least 1: PX 0 is an error.
func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// getString is GET that tells a missing key (ok false) from a failure.
func (r *Client) getString(ctx context.Context, key string) (string, bool, error) {
	v, err := r.c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return v, true, nil
}

// Attempt is one attempt to write with RecordAttempt.
type Attempt struct {
	TaskID  string
	Outcome string
	// JSON is the encoded attempt, stored in the history and the stream.
	JSON []byte
	// Dead is the encoded dead-letter record when the attempt ended the
	// task, nil otherwise; DiedAt scores it in the index.
	Dead   []byte
	DiedAt time.Time
	// Succeeded writes the success mark, holding At.
	Succeeded bool
	At        time.Time
	// Claim, when set, is the in-flight claim token to release.
	Claim string
}

// RecordLimits bound what RecordAttempt keeps.
type RecordLimits struct {
	Retention   time.Duration // histories and success marks of live tasks
	StreamMax   int64         // approximate cap of the outcomes stream
	AttemptsMax int64         // newest attempts kept per task
}

// RecordAttempt writes one attempt in a single pipelined round trip:
// recordScript writes the task's own keys (the history, capped and expiring
// unless the task is dead; the dead-letter record, added when dead, removed
// otherwise; the success mark; the release of the in-flight claim), then
// the dead-letter index entry (added or removed with the record) and the
// stream entry.
func (r *Client) RecordAttempt(ctx context.Context, a Attempt, l RecordLimits) error {
	var record *redis.Cmd
	cmds, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		record = queueRecord(ctx, p, a, l)
		return nil
	})
	return r.afterRecord(ctx, a, l, cmds, record, err)
}

// recordArgs are recordScript's keys and arguments for a.
func recordArgs(a Attempt, l RecordLimits) (keys []string, args []any) {
	var dead, mark string
	if a.Dead != nil {
		dead = string(a.Dead)
	}
	if a.Succeeded {
		mark = a.At.UTC().Format(time.RFC3339Nano)
	}
	keys = []string{AttemptsKey(a.TaskID), DeadKey(a.TaskID), DoneKey(a.TaskID), InflightKey(a.TaskID)}
	return keys, []any{a.JSON, -l.AttemptsMax, ms(l.Retention), dead, mark, a.Claim}
}

// queueRecord queues RecordAttempt's commands on p and returns recordScript's.
func queueRecord(ctx context.Context, p redis.Pipeliner, a Attempt, l RecordLimits) (record *redis.Cmd) {
	keys, args := recordArgs(a, l)
	record = recordScript.EvalSha(ctx, p, keys, args...)
	if a.Dead != nil {
		p.ZAdd(ctx, DeadIndexKey, redis.Z{Score: float64(a.DiedAt.UnixMilli()), Member: a.TaskID})
	} else {
		p.ZRem(ctx, DeadIndexKey, a.TaskID)
	}
	p.XAdd(ctx, &redis.XAddArgs{
		Stream: OutcomesKey,
		MaxLen: l.StreamMax,
		Approx: true,
		Values: []any{"task_id", a.TaskID, "outcome", a.Outcome, "attempt", a.JSON},
	})
	return record
}

// afterRecord finishes a record's round trip: when only recordScript
// failed, refused with NOSCRIPT (the script cache was empty: a restarted
// Redis, a new cluster node), the rest is written and the script runs on
// its own with EVAL, which caches it for the next EVALSHA.
func (r *Client) afterRecord(ctx context.Context, a Attempt, l RecordLimits, cmds []redis.Cmder, record *redis.Cmd, err error) error {
	// Without its commands back the caller's context ended first
	// (coalescing.Pipelined), and record may still be in use by a flusher.
	if len(cmds) > 0 && isNoScript(record.Err()) && onlyFailure(cmds, record) {
		keys, args := recordArgs(a, l)
		return recordScript.Eval(ctx, r.c, keys, args...).Err()
	}
	return err
}

// isNoScript reports an EVALSHA refused because the server does not have
// the script: the script did not run, and EVAL runs it (and caches it).
// Scripts on the hot path go by EVALSHA, so the server does not hash their
// text on every call.
func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// onlyFailure reports whether cmd is the only command of cmds that failed.
func onlyFailure(cmds []redis.Cmder, cmd redis.Cmder) bool {
	for _, c := range cmds {
		if c != cmd && c.Err() != nil {
			return false
		}
	}
	return true
}

// Claim answers of ClaimTask.
const (
	Claimed          = 0
	AlreadySucceeded = 1
	InFlight         = 2
)

// ClaimTask checks the task's success mark and, if there is none, claims
// the right to call the provider for ttl, in one round trip. It returns
// Claimed, AlreadySucceeded with the success time, or InFlight with what is
// left of the other delivery's claim.
//
// The round trip is a pipeline of two plain commands on the task's own
// slot, run in this order: SET NX the claim, GET the success mark. No
// script is needed because the mark is read after the claim is taken: a
// record writes the mark before it drops the claim (recordScript), so a
// claim won after another delivery's success always reads its mark. When
// the mark is there the task already succeeded whoever holds the claim; a
// claim taken then is dropped by the suppressed attempt's record (the
// handler records it with the claim's token). Only a claim held by another
// delivery costs a second round trip, for what is left of it (PTTL).
func (r *Client) ClaimTask(ctx context.Context, taskID, token string, ttl time.Duration) (state int, doneAt time.Time, left time.Duration, err error) {
	cmds, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SetNX(ctx, InflightKey(taskID), token, ttl)
		p.Get(ctx, DoneKey(taskID))
		return nil
	})
	if len(cmds) != 2 {
		// Not sent, or the caller's context ended before the answer
		// (coalescing.Pipelined): the claim may have been taken, and
		// expires with ttl.
		return 0, time.Time{}, 0, cmp.Or(err, errUnexpected(len(cmds)))
	}
	set, done := cmds[0].(*redis.BoolCmd), cmds[1].(*redis.StringCmd)
	mark, err := done.Result()
	switch {
	case err == nil:
		at, _ := time.Parse(time.RFC3339Nano, mark)
		return AlreadySucceeded, at, 0, nil
	case !errors.Is(err, redis.Nil):
		return 0, time.Time{}, 0, err
	}
	won, err := set.Result()
	if err != nil {
		return 0, time.Time{}, 0, err
	}
	if won {
		return Claimed, time.Time{}, 0, nil
	}
	d, err := r.c.PTTL(ctx, InflightKey(taskID)).Result()
	if err != nil {
		return 0, time.Time{}, 0, err
	}
	// -2: the claim ended since the SET NX; 0 sends the caller back at once.
	return InFlight, time.Time{}, max(d, 0), nil
}

// SucceededAt reads the task's success mark.
func (r *Client) SucceededAt(ctx context.Context, taskID string) (time.Time, bool, error) {
	v, ok, err := r.getString(ctx, DoneKey(taskID))
	if !ok || err != nil {
		return time.Time{}, false, err
	}
	at, _ := time.Parse(time.RFC3339Nano, v)
	return at, true, nil
}

// Attempts returns the encoded attempts of a task, oldest first.
func (r *Client) Attempts(ctx context.Context, taskID string) ([]string, error) {
	return r.c.LRange(ctx, AttemptsKey(taskID), 0, -1).Result()
}

// TaskExists reports whether asynq holds task id of queue, in any state. A
// plain EXISTS is one round trip with a deadline, where
// asynq.Inspector.GetTaskInfo runs a script without one.
func (r *Client) TaskExists(ctx context.Context, queue, id string) (bool, error) {
	n, err := r.c.Exists(ctx, AsynqTaskKey(queue, id)).Result()
	return n == 1, err
}

func errUnexpected(reply any) error { return fmt.Errorf("unexpected reply %v", reply) }

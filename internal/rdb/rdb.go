package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client runs certmail's commands and scripts on one go-redis client, which
// it shares with asynq. It is safe for concurrent use.
type Client struct {
	c redis.UniversalClient
}

// New returns a Client on c.
func New(c redis.UniversalClient) *Client { return &Client{c: c} }

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

// RecordAttempt writes one attempt in a single pipelined round trip: the
// history (capped, expiring unless the task is dead), the dead-letter
// record and index entry (added when dead, removed otherwise: a task
// replayed from the dashboard keeps its ID, and once it runs again it is no
// longer dead), the success mark, the release of the in-flight claim and
// the stream entry.
func (r *Client) RecordAttempt(ctx context.Context, a Attempt, l RecordLimits) error {
	_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		key := AttemptsKey(a.TaskID)
		p.RPush(ctx, key, a.JSON)
		p.LTrim(ctx, key, -l.AttemptsMax, -1)
		if a.Dead != nil {
			p.Persist(ctx, key)
			p.Set(ctx, DeadKey(a.TaskID), a.Dead, 0)
			p.ZAdd(ctx, DeadIndexKey, redis.Z{Score: float64(a.DiedAt.UnixMilli()), Member: a.TaskID})
		} else {
			p.Expire(ctx, key, l.Retention)
			p.Del(ctx, DeadKey(a.TaskID))
			p.ZRem(ctx, DeadIndexKey, a.TaskID)
		}
		if a.Succeeded {
			p.Set(ctx, DoneKey(a.TaskID), a.At.UTC().Format(time.RFC3339Nano), l.Retention)
		}
		if a.Claim != "" {
			releaseScript.Eval(ctx, p, []string{InflightKey(a.TaskID)}, a.Claim)
		}
		p.XAdd(ctx, &redis.XAddArgs{
			Stream: OutcomesKey,
			MaxLen: l.StreamMax,
			Approx: true,
			Values: []any{"task_id", a.TaskID, "outcome", a.Outcome, "attempt", a.JSON},
		})
		return nil
	})
	return err
}

// Claim answers of ClaimTask, as claimScript returns them.
const (
	Claimed          = 0
	AlreadySucceeded = 1
	InFlight         = 2
)

// ClaimTask checks the task's success mark and, if there is none, claims
// the right to call the provider for ttl, in one round trip. It returns
// Claimed, AlreadySucceeded with the success time, or InFlight with what is
// left of the other delivery's claim.
func (r *Client) ClaimTask(ctx context.Context, taskID, token string, ttl time.Duration) (state int, doneAt time.Time, left time.Duration, err error) {
	res, err := claimScript.Eval(ctx, r.c, []string{DoneKey(taskID), InflightKey(taskID)}, token, ms(ttl)).Slice()
	if err != nil {
		return 0, time.Time{}, 0, err
	}
	if len(res) != 2 {
		return 0, time.Time{}, 0, errUnexpected(res)
	}
	st, _ := res[0].(int64)
	info, _ := res[1].(string)
	switch st {
	case AlreadySucceeded:
		at, _ := time.Parse(time.RFC3339Nano, info)
		return AlreadySucceeded, at, 0, nil
	case InFlight:
		n, _ := strconv.ParseInt(info, 10, 64)
		return InFlight, time.Time{}, time.Duration(max(n, 0)) * time.Millisecond, nil
	default:
		return Claimed, time.Time{}, 0, nil
	}
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

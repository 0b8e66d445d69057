package rdb

import (
	"cmp"
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Hot-path variants of the functions in rdb.go and dedup.go: the same keys
// and the same effects, with round trips folded. They are kept apart so the
// originals stay the reference.

// SetDedupMarks is SetDedupMark for many marks in one pipelined round trip:
// set[i] reports whether the mark of hashes[i] was set to values[i] (SET NX
// with window), errs[i] why its command failed (set[i] is then false; the
// mark may still have been set if only the reply was lost).
func (r *Client) SetDedupMarks(ctx context.Context, hashes, values []string, window time.Duration) (set []bool, errs []error) {
	set, errs = make([]bool, len(hashes)), make([]error, len(hashes))
	cmds, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, h := range hashes {
			p.SetNX(ctx, DedupKey(h), values[i], window)
		}
		return nil
	})
	for i := range hashes {
		if len(cmds) != len(hashes) {
			// Not sent, or the caller's context ended before the answer
			// (coalescing.Pipelined): any mark may have been set.
			errs[i] = cmp.Or(err, errUnexpected(len(cmds)))
			continue
		}
		set[i], errs[i] = cmds[i].(*redis.BoolCmd).Result()
	}
	return set, errs
}

// RecordAttemptWithResult is RecordAttempt plus asynq's result of the task
// (what asynq's ResultWriter writes: the field "result" of the task's hash,
// AsynqTaskKey) in the same pipelined round trip, instead of one round trip
// for each. The attempt's commands are RecordAttempt's own (queueRecord),
// so the two can never drift apart. In a Redis Cluster go-redis splits the
// pipeline by slot, so the task's hash (slot of {queue}) and certmail's
// keys (slot of the task) may live apart.
func (r *Client) RecordAttemptWithResult(ctx context.Context, a Attempt, l RecordLimits, queue string, result []byte) error {
	var record *redis.Cmd
	cmds, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, AsynqTaskKey(queue, a.TaskID), "result", result)
		record = queueRecord(ctx, p, a, l)
		return nil
	})
	return r.afterRecord(ctx, a, l, cmds, record, err)
}

package rdb

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// chunk bounds the keys of one pipeline, so that a large dead-letter
// list does not block Redis with one huge command.
const chunk = 1000

// finishedMarkTTL is how long a finished dead-letter claim answers a
// repeated finish; go-redis retries within seconds.
const finishedMarkTTL = 10 * time.Minute

// AddDead adds the dead letter of task id, found in the archive of queue,
// unless the task left the archive, a record or tombstone exists, or the
// task has a success mark (see addDeadScript). It reports whether it added
// one.
//
// Three steps, because their keys live in three slots: the archive check
// (asynq's key, read only), the script on the task's own keys, then the
// index entry. A crash after the script leaves a record without an index
// entry, which listings do not show until Reindex (run by every sweep over
// the archive) adds it; AddDead then reports the error, with added true.
func (r *Client) AddDead(ctx context.Context, id, queue string, record []byte, diedAt time.Time) (bool, error) {
	err := r.c.ZScore(ctx, AsynqArchivedKey(queue), id).Err()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	n, err := addDeadScript.Eval(ctx, r.c,
		[]string{DeadKey(id), TombKey(id), AttemptsKey(id), DoneKey(id)}, record).Int()
	if err != nil || n != 1 {
		return false, err
	}
	return true, r.IndexDead(ctx, id, diedAt)
}

// IndexDead adds id to the dead-letter index with its time of death, unless
// it is there already.
func (r *Client) IndexDead(ctx context.Context, id string, diedAt time.Time) error {
	return r.c.ZAddNX(ctx, DeadIndexKey, redis.Z{Score: float64(diedAt.UnixMilli()), Member: id}).Err()
}

// DeadClaimReply is the answer of ClaimDead.
type DeadClaimReply struct {
	Won bool
	// Record is the encoded dead letter (Won only).
	Record string
	// SuccessorSeen: a key of the successor exists (Won only).
	SuccessorSeen bool
	// Tombstone is the tombstone of a record that is gone ("" if none).
	Tombstone string
	// Held is another caller's claim value, "op:token" (!Won, record there).
	Held string
}

// ClaimDead claims dead letter id with claim ("op:token") for lease (see
// claimDeadScript) and, when it won, looks for traces of the successor task
// (queue succQueue, ID succID) that a replay creates: its asynq hash, its
// history, success mark, dead letter or tombstone, under their tagged and
// legacy names.
//
// The look happens after the claim, in one pipeline (the successor's keys
// are in other slots). Only a holder of the claim enqueues the successor
// (after renewing it), so whatever an earlier holder enqueued is there
// before this claim was won, and the look sees it.
func (r *Client) ClaimDead(ctx context.Context, id, claim string, lease time.Duration, succQueue, succID string) (DeadClaimReply, error) {
	res, err := claimDeadScript.Eval(ctx, r.c, []string{DeadKey(id), DeadClaimKey(id), TombKey(id)}, claim, ms(lease)).Slice()
	if err != nil {
		return DeadClaimReply{}, err
	}
	if len(res) < 2 {
		return DeadClaimReply{}, errUnexpected(res)
	}
	state, _ := res[0].(int64)
	info, _ := res[1].(string)
	switch state {
	case 0:
		seen, err := r.successorSeen(ctx, succQueue, succID)
		if err != nil {
			return DeadClaimReply{}, err
		}
		return DeadClaimReply{Won: true, Record: info, SuccessorSeen: seen}, nil
	case 1:
		return DeadClaimReply{Tombstone: info}, nil
	default:
		return DeadClaimReply{Held: info}, nil
	}
}

// successorSeen reports whether any key of task id (queue queue) exists:
// one EXISTS per slot (the tagged keys share one), in one pipeline.
func (r *Client) successorSeen(ctx context.Context, queue, id string) (bool, error) {
	var cmds []*redis.IntCmd
	_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		cmds = append(cmds,
			p.Exists(ctx, AsynqTaskKey(queue, id)),
			p.Exists(ctx, AttemptsKey(id), DoneKey(id), DeadKey(id), TombKey(id)),
			p.Exists(ctx, LegacyAttemptsKey(id)),
			p.Exists(ctx, LegacyDeadKey(id)),
			p.Exists(ctx, LegacyTombKey(id)))
		return nil
	})
	if err != nil {
		return false, err
	}
	for _, c := range cmds {
		if c.Val() > 0 {
			return true, nil
		}
	}
	return false, nil
}

// RenewDead extends claim on dead letter id for lease, or takes it again if
// it lapsed untouched; it reports whether the caller holds it.
func (r *Client) RenewDead(ctx context.Context, id, claim string, lease time.Duration) (bool, error) {
	n, err := renewDeadScript.Eval(ctx, r.c, []string{DeadClaimKey(id), DeadKey(id)}, claim, ms(lease)).Int()
	return n == 1, err
}

// FinishDead removes dead letter id for the holder of claim, leaving
// tombstone tomb for tombTTL and the history expiring after retention (see
// finishDeadScript), then removes its index entry. It reports whether it
// finished.
//
// The index entry is in another slot, so it goes in a second command: a
// crash or failure between the two leaves an entry without a record, which
// listings skip and remove (DropDeadIndex) since a tombstone marks it
// finished. Such a failure is not reported: the dead letter is finished,
// and a caller told otherwise would report a replay that happened as
// failed.
func (r *Client) FinishDead(ctx context.Context, id, claim, tomb string, tombTTL, retention time.Duration) (bool, error) {
	n, err := finishDeadScript.Eval(ctx, r.c,
		[]string{DeadKey(id), DeadClaimKey(id), TombKey(id), AttemptsKey(id)},
		claim, tomb, tombTTL.Milliseconds(), int64(retention/time.Second),
		finishedMarkTTL.Milliseconds()).Int()
	if err != nil || n != 1 {
		return false, err
	}
	_ = r.c.ZRem(ctx, DeadIndexKey, id).Err()
	return true, nil
}

// ReleaseDead gives claim on dead letter id up, if it is still the caller's.
func (r *Client) ReleaseDead(ctx context.Context, id, claim string) error {
	return releaseScript.Eval(ctx, r.c, []string{DeadClaimKey(id)}, claim).Err()
}

// Tombstone reads the tombstone of dead letter id ("" when there is none).
func (r *Client) Tombstone(ctx context.Context, id string) (string, error) {
	v, _, err := r.getString(ctx, TombKey(id))
	return v, err
}

// HasDead reports, for each id, whether a dead-letter record exists.
func (r *Client) HasDead(ctx context.Context, ids []string) ([]bool, error) {
	out := make([]bool, len(ids))
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		cmds := make([]*redis.IntCmd, 0, hi-lo)
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids[lo:hi] {
				cmds = append(cmds, p.Exists(ctx, DeadKey(id)))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for i, c := range cmds {
			out[lo+i] = c.Val() > 0
		}
	}
	return out, nil
}

// DeadIDs returns the IDs in the dead-letter index, oldest death first.
func (r *Client) DeadIDs(ctx context.Context) ([]string, error) {
	return r.c.ZRange(ctx, DeadIndexKey, 0, -1).Result()
}

// DeadIDsBefore returns the IDs of dead letters that died before t, oldest
// first (the index is scored by time of death).
func (r *Client) DeadIDsBefore(ctx context.Context, t time.Time) ([]string, error) {
	return r.c.ZRangeByScore(ctx, DeadIndexKey, &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(t.UnixMilli(), 10),
	}).Result()
}

// DeadRecords returns the encoded dead letters of ids, in order; ok[i] is
// false where the record is gone (an index entry deleted concurrently).
// One GET per key, pipelined (the records are in as many slots as IDs; a
// cluster client splits the pipeline per node).
func (r *Client) DeadRecords(ctx context.Context, ids []string) (recs []string, ok []bool, err error) {
	recs, ok = make([]string, len(ids)), make([]bool, len(ids))
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		cmds := make([]*redis.StringCmd, 0, hi-lo)
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids[lo:hi] {
				cmds = append(cmds, p.Get(ctx, DeadKey(id)))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, nil, err
		}
		for i, c := range cmds {
			v, err := c.Result()
			switch {
			case errors.Is(err, redis.Nil):
			case err != nil:
				return nil, nil, err
			default:
				recs[lo+i], ok[lo+i] = v, true
			}
		}
	}
	return recs, ok, nil
}

// DeadIndexed reports, for each id, whether the dead-letter index holds it
// (one pipeline on the one index key).
func (r *Client) DeadIndexed(ctx context.Context, ids []string) ([]bool, error) {
	out := make([]bool, len(ids))
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		cmds := make([]*redis.FloatCmd, 0, hi-lo)
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids[lo:hi] {
				cmds = append(cmds, p.ZScore(ctx, DeadIndexKey, id))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		for i, c := range cmds {
			if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return nil, err
			}
			out[lo+i] = c.Err() == nil
		}
	}
	return out, nil
}

// DropDeadIndex removes from the index those of ids that have no record
// but a tombstone: finished dead letters whose FinishDead stopped before
// its second step. An entry without record nor tombstone is left alone: it
// may be a record being written or removed right now (RecordAttempt writes
// record then entry, and removes record then entry). It returns the IDs
// removed.
func (r *Client) DropDeadIndex(ctx context.Context, ids []string) ([]string, error) {
	var dropped []string
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		cmds := make([]*redis.IntCmd, 0, 2*(hi-lo))
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids[lo:hi] {
				cmds = append(cmds, p.Exists(ctx, DeadKey(id)), p.Exists(ctx, TombKey(id)))
			}
			return nil
		})
		if err != nil {
			return dropped, err
		}
		var gone []any
		for i, id := range ids[lo:hi] {
			if cmds[2*i].Val() == 0 && cmds[2*i+1].Val() == 1 {
				gone = append(gone, id)
			}
		}
		if len(gone) == 0 {
			continue
		}
		if err := r.c.ZRem(ctx, DeadIndexKey, gone...).Err(); err != nil {
			return dropped, err
		}
		for _, g := range gone {
			dropped = append(dropped, g.(string))
		}
	}
	return dropped, nil
}

// DeadRecord returns the encoded dead letter of id.
func (r *Client) DeadRecord(ctx context.Context, id string) (string, bool, error) {
	return r.getString(ctx, DeadKey(id))
}

// DeleteDead removes dead-letter records and their index entries; their
// histories get back their expiry (retention). It neither claims nor
// tombstones.
func (r *Client) DeleteDead(ctx context.Context, retention time.Duration, ids ...string) error {
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			members := make([]any, 0, hi-lo)
			for _, id := range ids[lo:hi] {
				p.Del(ctx, DeadKey(id))
				p.Expire(ctx, AttemptsKey(id), retention)
				members = append(members, id)
			}
			p.ZRem(ctx, DeadIndexKey, members...)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// CountDead returns the number of dead letters (one ZCARD).
func (r *Client) CountDead(ctx context.Context) (int64, error) {
	return r.c.ZCard(ctx, DeadIndexKey).Result()
}

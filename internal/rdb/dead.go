package rdb

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// chunk bounds the keys of one MGET or pipeline, so that a large dead-letter
// list does not block Redis with one huge command.
const chunk = 1000

// finishedMarkTTL is how long a finished dead-letter claim answers a
// repeated finish; go-redis retries within seconds.
const finishedMarkTTL = 10 * time.Minute

// AddDead adds the dead letter of task id, found in the archive of queue,
// unless a record or tombstone exists or the task left the archive (see
// addDeadScript). It reports whether it added one.
func (r *Client) AddDead(ctx context.Context, id, queue string, record []byte, diedAt time.Time) (bool, error) {
	n, err := addDeadScript.Eval(ctx, r.c,
		[]string{DeadKey(id), TombKey(id), DeadIndexKey, AttemptsKey(id), AsynqArchivedKey(queue)},
		record, diedAt.UnixMilli(), id).Int()
	return n == 1, err
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

// ClaimDead claims dead letter id with claim ("op:token") for lease, and
// looks for traces of the successor task (queue succQueue, ID succID) that
// a replay creates. See claimDeadScript.
func (r *Client) ClaimDead(ctx context.Context, id, claim string, lease time.Duration, succQueue, succID string) (DeadClaimReply, error) {
	keys := []string{DeadKey(id), DeadClaimKey(id), TombKey(id),
		AsynqTaskKey(succQueue, succID), AttemptsKey(succID), DoneKey(succID), DeadKey(succID), TombKey(succID)}
	res, err := claimDeadScript.Eval(ctx, r.c, keys, claim, ms(lease)).Slice()
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
		return DeadClaimReply{Won: true, Record: info, SuccessorSeen: len(res) > 2 && res[2] == int64(1)}, nil
	case 1:
		return DeadClaimReply{Tombstone: info}, nil
	default:
		return DeadClaimReply{Held: info}, nil
	}
}

// RenewDead extends claim on dead letter id for lease, or takes it again if
// it lapsed untouched; it reports whether the caller holds it.
func (r *Client) RenewDead(ctx context.Context, id, claim string, lease time.Duration) (bool, error) {
	n, err := renewDeadScript.Eval(ctx, r.c, []string{DeadClaimKey(id), DeadKey(id)}, claim, ms(lease)).Int()
	return n == 1, err
}

// FinishDead removes dead letter id for the holder of claim, leaving
// tombstone tomb for tombTTL and the history expiring after retention. It
// reports whether it finished. See finishDeadScript.
func (r *Client) FinishDead(ctx context.Context, id, claim, tomb string, tombTTL, retention time.Duration) (bool, error) {
	n, err := finishDeadScript.Eval(ctx, r.c,
		[]string{DeadKey(id), DeadClaimKey(id), TombKey(id), DeadIndexKey, AttemptsKey(id)},
		claim, tomb, tombTTL.Milliseconds(), int64(retention/time.Second), id,
		finishedMarkTTL.Milliseconds()).Int()
	return n == 1, err
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
func (r *Client) DeadRecords(ctx context.Context, ids []string) (recs []string, ok []bool, err error) {
	recs, ok = make([]string, len(ids)), make([]bool, len(ids))
	for lo := 0; lo < len(ids); lo += chunk {
		hi := min(lo+chunk, len(ids))
		keys := make([]string, 0, hi-lo)
		for _, id := range ids[lo:hi] {
			keys = append(keys, DeadKey(id))
		}
		vals, err := r.c.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, nil, err
		}
		for i, v := range vals {
			recs[lo+i], ok[lo+i] = v.(string)
		}
	}
	return recs, ok, nil
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

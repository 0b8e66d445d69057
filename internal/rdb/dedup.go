package rdb

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Enqueue deduplication marks. A mark is keyed by a hash of the request
// (the tasks package decides what is hashed and what the mark holds) and
// expires with the dedup window.

// SetDedupMark sets the mark of hash to value for window unless one exists
// (SET NX), and reports whether it set it.
func (r *Client) SetDedupMark(ctx context.Context, hash, value string, window time.Duration) (bool, error) {
	return r.c.SetNX(ctx, DedupKey(hash), value, window).Result()
}

// DedupState is the mark of a hash as read by DedupMark.
type DedupState struct {
	Value  string // "" when Exists is false
	Exists bool
	// Failed is the task ID noted by NoteDedupFailed ("" when none); FailedErr
	// is the error reading it, if any.
	Failed    string
	FailedErr error
	// TTL is what is left of the mark; TTLErr the error reading it, if any.
	TTL    time.Duration
	TTLErr error
}

// DedupMark reads the mark of hash, its failure note and its remaining TTL
// in one pipelined round trip. Only an error reading the mark itself is
// returned; the other two errors are reported in the state, for the caller
// to weigh only when it needs those values.
func (r *Client) DedupMark(ctx context.Context, hash string) (DedupState, error) {
	key := DedupKey(hash)
	pipe := r.c.Pipeline()
	getCmd := pipe.Get(ctx, key)
	failedCmd := pipe.Get(ctx, DedupFailedKey(hash))
	ttlCmd := pipe.PTTL(ctx, key)
	_, _ = pipe.Exec(ctx)
	cur, err := getCmd.Result()
	if errors.Is(err, redis.Nil) { // expired or released meanwhile
		return DedupState{}, nil
	}
	if err != nil {
		return DedupState{}, err
	}
	st := DedupState{Value: cur, Exists: true}
	st.Failed, st.FailedErr = failedCmd.Result()
	if errors.Is(st.FailedErr, redis.Nil) {
		st.Failed, st.FailedErr = "", nil
	}
	st.TTL, st.TTLErr = ttlCmd.Result()
	return st, nil
}

// GetDedupMark reads the mark of hash; a missing mark is an error
// (redis.Nil).
func (r *Client) GetDedupMark(ctx context.Context, hash string) (string, error) {
	return r.c.Get(ctx, DedupKey(hash)).Result()
}

// ReleaseDedupMark deletes the mark of hash if it still holds value.
func (r *Client) ReleaseDedupMark(ctx context.Context, hash, value string) error {
	return releaseScript.Run(ctx, r.c, []string{DedupKey(hash)}, value).Err()
}

// NoteDedupFailed notes, for window, that the enqueue of task id under the
// mark of hash definitely failed: a plain SET, for when ReleaseDedupMark
// could not run.
func (r *Client) NoteDedupFailed(ctx context.Context, hash, id string, window time.Duration) error {
	return r.c.Set(ctx, DedupFailedKey(hash), id, window).Err()
}

// TakeOverDedupMark replaces the mark of hash by value for window if it
// still holds old, and reports whether it did.
func (r *Client) TakeOverDedupMark(ctx context.Context, hash, old, value string, window time.Duration) (bool, error) {
	return takeoverScript.Run(ctx, r.c, []string{DedupKey(hash)}, old, value, window.Milliseconds()).Bool()
}

// RepointDedupMark replaces the mark of hash by value, keeping its expiry,
// if it still holds old.
func (r *Client) RepointDedupMark(ctx context.Context, hash, old, value string) error {
	return repointScript.Run(ctx, r.c, []string{DedupKey(hash)}, old, value).Err()
}

package rdb

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Idempotency records of the HTTP API (Idempotency-Key). One key per
// record, IdempotencyKey(scope), where scope is a hash of the producer and
// its key: the api package encodes what the record holds (pending, or the
// stored response with the request's fingerprint); this layer stores bytes.

// TakeIdempotency sets the record of scope to pending for lease unless one
// exists (SET NX), and reports whether it did; when it did not, it returns
// the existing record (nil if it vanished in between: try again).
func (r *Client) TakeIdempotency(ctx context.Context, scope string, pending []byte, lease time.Duration) (taken bool, existing []byte, err error) {
	key := IdempotencyKey(scope)
	ok, err := r.c.SetNX(ctx, key, pending, lease).Result()
	if err != nil || ok {
		return ok, nil, err
	}
	v, err := r.c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil, nil
	}
	return false, v, err
}

// GetIdempotency reads the record of scope (nil when there is none).
func (r *Client) GetIdempotency(ctx context.Context, scope string) ([]byte, error) {
	v, err := r.c.Get(ctx, IdempotencyKey(scope)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return v, err
}

// FinishIdempotency replaces the caller's pending record of scope by the
// final one for ttl, if the record still is the caller's, and reports
// whether it did (a lease that lapsed and was taken by another request
// leaves that request's record alone).
func (r *Client) FinishIdempotency(ctx context.Context, scope string, pending, final []byte, ttl time.Duration) (bool, error) {
	n, err := setIfScript.Run(ctx, r.c, []string{IdempotencyKey(scope)}, pending, final, ms(ttl)).Int()
	return n == 1, err
}

// ReleaseIdempotency deletes the caller's pending record of scope, if it
// still is the caller's: the request failed in a way not worth replaying
// (a Redis error), and a retry with the same key must run again.
func (r *Client) ReleaseIdempotency(ctx context.Context, scope string, pending []byte) error {
	return releaseScript.Run(ctx, r.c, []string{IdempotencyKey(scope)}, pending).Err()
}

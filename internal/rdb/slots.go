package rdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// CredentialHash names a provider credential in key names: the first 8
// bytes of its SHA-256 in hex, so a key never holds the credential.
func CredentialHash(credential string) string {
	sum := sha256.Sum256([]byte(credential))
	return hex.EncodeToString(sum[:8])
}

// acquireSlotScript is a counting semaphore with leases. Holders whose
// lease has passed (by Redis's clock, so workers' clocks do not matter) are
// dropped first: a slot held by a killed worker comes back by itself. Then
// the caller gets a slot if fewer than the cap are held. Running it again
// for a holder (a go-redis retry) renews its lease instead of taking a
// second slot.
//
// KEYS[1] SlotsKey. ARGV[1] the holder's token, ARGV[2] the cap, ARGV[3]
// the lease in ms.
// Returns {1, 0} when granted, {0, ms until the earliest lease expires}
// when the cap is full.
var acquireSlotScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
if redis.call("ZSCORE", KEYS[1], ARGV[1]) or redis.call("ZCARD", KEYS[1]) < tonumber(ARGV[2]) then
  redis.call("ZADD", KEYS[1], now + lease, ARGV[1])
  local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
  redis.call("PEXPIRE", KEYS[1], math.max(tonumber(last[2]) - now, 1))
  return {1, 0}
end
local first = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
return {0, math.max(tonumber(first[2]) - now, 1)}
`)

// AcquireSlot takes one of capacity slots of the semaphore of credHash at
// provider for token, for lease. When all are held it returns false and
// the time until the earliest lease expires, the latest a slot can free.
func (r *Client) AcquireSlot(ctx context.Context, provider, credHash, token string, capacity int, lease time.Duration) (bool, time.Duration, error) {
	res, err := acquireSlotScript.Run(ctx, r.c, []string{SlotsKey(provider, credHash)}, token, capacity, ms(lease)).Int64Slice()
	if err != nil {
		return false, 0, err
	}
	if len(res) != 2 {
		return false, 0, errUnexpected(res)
	}
	return res[0] == 1, time.Duration(res[1]) * time.Millisecond, nil
}

// ReleaseSlot gives back token's slot, and only token's: a holder whose
// lease lapsed and was taken over frees nothing of its successor's.
func (r *Client) ReleaseSlot(ctx context.Context, provider, credHash, token string) error {
	return r.c.ZRem(ctx, SlotsKey(provider, credHash), token).Err()
}

// SlotsHeld counts the live holders of the semaphore (for metrics and
// tests); expired holders not yet dropped by an acquire are not counted.
func (r *Client) SlotsHeld(ctx context.Context, provider, credHash string) (int64, error) {
	now, err := r.c.Time(ctx).Result()
	if err != nil {
		return 0, err
	}
	return r.c.ZCount(ctx, SlotsKey(provider, credHash), "("+strconv.FormatInt(now.UnixMilli(), 10), "+inf").Result()
}

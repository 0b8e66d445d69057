package rdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"time"
)

// Limiter reserves request slots under rolling-window rules, shared by
// every worker through reserveScript: a sliding-window log per rule, all
// rules of one credential taken in one atomic step. Its keys are
// RateLimitKey, under Prefix like every certmail key.
type Limiter struct {
	r *Client
}

// NewLimiter returns a Limiter on the Client's connection.
func (r *Client) NewLimiter() *Limiter { return &Limiter{r: r} }

// LimitRule allows N grants in every rolling window of length Per.
type LimitRule struct {
	N   int
	Per time.Duration
}

// Reservation is the answer of Reserve.
type Reservation struct {
	// Wait is 0 when the slot was taken; otherwise the exact time until a
	// slot frees under every rule (the longest over the refusing rules),
	// as of At.
	Wait time.Duration
	// Rule is the index of the rule that imposed Wait.
	Rule int
	// At is the Redis server's time of the decision (the grant's time in
	// the logs when granted).
	At time.Time
}

// Reserve takes one slot under every rule for the credential hashed as
// credHash at provider, or none.
func (l *Limiter) Reserve(ctx context.Context, provider, credHash string, rules []LimitRule) (Reservation, error) {
	keys := make([]string, len(rules))
	args := make([]any, 0, 1+2*len(rules))
	var tok [8]byte
	_, _ = rand.Read(tok[:])
	args = append(args, hex.EncodeToString(tok[:]))
	for i, ru := range rules {
		keys[i] = RateLimitKey(provider, credHash, i)
		args = append(args, ru.N, max(ru.Per.Microseconds(), 1))
	}
	res, err := reserveScript.Run(ctx, l.r.c, keys, args...).Slice()
	if err != nil {
		return Reservation{}, err
	}
	if len(res) != 3 {
		return Reservation{}, errUnexpected(res)
	}
	wait, _ := res[0].(int64)
	rule, _ := res[1].(int64)
	s, _ := res[2].(string)
	at, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return Reservation{}, errUnexpected(res)
	}
	return Reservation{Wait: time.Duration(wait) * time.Microsecond, Rule: int(rule), At: time.UnixMicro(at)}, nil
}

// RateLimitLog returns the grant times logged for rule i of a credential,
// oldest first (for tests and diagnostics).
func (l *Limiter) RateLimitLog(ctx context.Context, provider, credHash string, rule int) ([]time.Time, error) {
	zs, err := l.r.c.ZRangeWithScores(ctx, RateLimitKey(provider, credHash, rule), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]time.Time, len(zs))
	for i, z := range zs {
		out[i] = time.UnixMicro(int64(z.Score))
	}
	return out, nil
}

// rateLimitTag is the hash tag shared by every rule key of one credential,
// so that reserveScript touches one cluster slot.
func rateLimitTag(provider, credHash string) string {
	return "{" + provider + ":" + credHash + "}"
}

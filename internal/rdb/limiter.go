package rdb

import (
	"context"
	"strings"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limiter is a GCRA rate limiter (github.com/go-redis/redis_rate: one
// atomic script per call, shared by every worker) whose keys are
// RateLimitKey, under Prefix like every certmail key.
type Limiter struct {
	l *redis_rate.Limiter
}

// NewLimiter returns a Limiter on the Client's connection.
func (r *Client) NewLimiter() *Limiter {
	return &Limiter{l: redis_rate.NewLimiter(unprefixed{r.c})}
}

// Allow takes one slot of rule i (limit) for the credential hashed as
// credHash at provider.
func (l *Limiter) Allow(ctx context.Context, provider, credHash string, rule int, limit redis_rate.Limit) (*redis_rate.Result, error) {
	return l.l.Allow(ctx, RateLimitKey(provider, credHash, rule), limit)
}

// redisRatePrefix is what redis_rate v10 puts before every key it is
// given; it offers no option to change it. TestLimiterKeys pins it.
const redisRatePrefix = "rate:"

// unprefixed hands redis_rate a client that strips the prefix it adds, so
// that the key in Redis is the RateLimitKey the Limiter passed.
type unprefixed struct{ redis.UniversalClient }

func strip(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if rest, ok := strings.CutPrefix(k, redisRatePrefix); ok && strings.HasPrefix(rest, Prefix) {
			k = rest
		}
		out[i] = k
	}
	return out
}

func (u unprefixed) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return u.UniversalClient.Eval(ctx, script, strip(keys), args...)
}

func (u unprefixed) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return u.UniversalClient.EvalSha(ctx, sha1, strip(keys), args...)
}

func (u unprefixed) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return u.UniversalClient.EvalRO(ctx, script, strip(keys), args...)
}

func (u unprefixed) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return u.UniversalClient.EvalShaRO(ctx, sha1, strip(keys), args...)
}

func (u unprefixed) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return u.UniversalClient.Del(ctx, strip(keys)...)
}

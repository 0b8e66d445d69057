package redisconn

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/redis/go-redis/v9"
)

// ConnectPool is Connect with a connection pool of at least n (go-redis's
// default is 10 per CPU): a worker whose handlers, at its concurrency, each
// make a few round trips per task would otherwise queue for connections. A
// pool_size given in the URL larger than n is kept.
func ConnectPool(ctx context.Context, raw string, timeout time.Duration, n int) (*redis.Client, error) {
	opt, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	opt.PoolSize = max(opt.PoolSize, n, 10*runtime.GOMAXPROCS(0))
	c := redis.NewClient(opt)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis unreachable at %s: %v (check --redis-url or REDIS_URL)", opt.Addr, err)
	}
	return c, nil
}

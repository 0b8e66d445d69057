package redisconn

import (
	"context"
	"runtime"
	"time"

	"github.com/redis/go-redis/v9"
)

// ConnectPool is Connect with a connection pool of at least n (go-redis's
// default is 10 per CPU): a worker whose handlers, at its concurrency, each
// make a few round trips per task would otherwise queue for connections. A
// pool_size given in the URL larger than n is kept. On a cluster the pool
// is per node.
func ConnectPool(ctx context.Context, raw string, timeout time.Duration, n int) (redis.UniversalClient, error) {
	c, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	floor := max(n, 10*runtime.GOMAXPROCS(0))
	switch c.Kind {
	case Sentinel:
		c.Failover.PoolSize = max(c.Failover.PoolSize, floor)
	case Cluster:
		c.ClusterOpts.PoolSize = max(c.ClusterOpts.PoolSize, floor)
	default:
		c.Single.PoolSize = max(c.Single.PoolSize, floor)
	}
	return c.connect(ctx, raw, timeout)
}

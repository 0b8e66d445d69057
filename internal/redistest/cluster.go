package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterMasters is the number of masters of a launched cluster: the
// smallest Redis Cluster, and enough for keys of one test to land on
// different nodes.
const ClusterMasters = 3

// Cluster is a Redis Cluster of ClusterMasters masters (no replicas) on
// loopback ports, launched from the redis-server binary: each master owns a
// third of the 16384 hash slots.
type Cluster struct {
	// Addrs are the masters' host:port, the seed addresses a cluster client
	// takes.
	Addrs []string

	procs []*proc
	dir   string // removed on stop when the cluster made it
}

// NewCluster starts a Redis Cluster of the test's own, stopped with the
// test. Without redis-server (or with CERTMAIL_TEST_NO_LAUNCH set) it skips
// the test, or fails it when CERTMAIL_REQUIRE_TOPOLOGIES is set.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	c, err := startCluster(t.TempDir())
	if err != nil {
		topologyUnavailable(t, "Redis Cluster", err)
	}
	t.Cleanup(c.stop)
	markReal(t)
	return c
}

var (
	sharedOnce    sync.Once
	sharedCluster *Cluster
	sharedErr     error
)

// SharedCluster returns the cluster shared by every test of the package
// (started on first use, stopped by Main), or skips/fails as NewCluster
// does. A cluster has one database only and is never flushed: tests sharing
// it must use keys of their own (random task IDs); a test that needs an
// empty keyspace takes NewCluster instead.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "certmail-cluster-")
		if err != nil {
			sharedErr = err
			return
		}
		sharedCluster, sharedErr = startCluster(dir)
		if sharedErr != nil {
			_ = os.RemoveAll(dir)
			return
		}
		sharedCluster.dir = dir
	})
	if sharedErr != nil {
		topologyUnavailable(t, "Redis Cluster", sharedErr)
	}
	markReal(t)
	return sharedCluster
}

// Client returns a go-redis cluster client on the cluster's seeds, closed
// with the test.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Backend describes the cluster as a Backend (Name "cluster"): Client
// refuses it, Universal returns a cluster client.
func (c *Cluster) Backend() Backend { return Backend{Name: "cluster", Cluster: c.Addrs} }

func (c *Cluster) stop() {
	for _, p := range c.procs {
		p.kill()
	}
	if c.dir != "" {
		_ = os.RemoveAll(c.dir)
	}
}

// startCluster launches the masters with their cluster state in dir,
// assigns each a contiguous third of the slots, introduces them to each
// other and waits until every node serves the whole slot map.
func startCluster(dir string) (*Cluster, error) {
	bin, err := lookServer()
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	var buses []int
	ok := false
	defer func() {
		if !ok {
			c.stop()
		}
	}()
	for i := range ClusterMasters {
		var addr string
		var bus int
		err := retryPorts(func() error {
			port, err := FreePort()
			if err != nil {
				return err
			}
			// The cluster bus port defaults to port+10000, which may be
			// taken or beyond 65535: ask for a free one too.
			if bus, err = FreePort(); err != nil {
				return err
			}
			p := strconv.Itoa(port)
			addr = "127.0.0.1:" + p
			node, err := launch(bin, []string{
				"--port", p, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(bus),
				"--cluster-config-file", fmt.Sprintf("nodes-%d-%s.conf", i, p),
				"--cluster-node-timeout", "5000",
				"--save", "", "--appendonly", "no", "--dir", dir,
				"--maxmemory-policy", "noeviction"}, "", nil, addr)
			if err == nil {
				c.procs = append(c.procs, node)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		buses = append(buses, bus)
		c.Addrs = append(c.Addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := make([]*redis.Client, len(c.Addrs))
	for i, a := range c.Addrs {
		nodes[i] = redis.NewClient(&redis.Options{Addr: a})
		defer nodes[i].Close()
	}
	const slots = 16384
	for i, n := range nodes {
		lo, hi := i*slots/len(nodes), (i+1)*slots/len(nodes)-1
		if err := n.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			return nil, fmt.Errorf("cluster addslotsrange on %s: %w", c.Addrs[i], err)
		}
	}
	for i, a := range c.Addrs[1:] {
		host, port, _ := strings.Cut(a, ":")
		if err := nodes[0].Do(ctx, "CLUSTER", "MEET", host, port, buses[i+1]).Err(); err != nil {
			return nil, fmt.Errorf("cluster meet %s: %w", a, err)
		}
	}
	if err := waitClusterOK(ctx, nodes); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// waitClusterOK waits until every node says cluster_state:ok and knows
// every master as owner of its slots, so that a client seeded from any of
// them gets the full map and no redirection.
func waitClusterOK(ctx context.Context, nodes []*redis.Client) error {
	var last error
	for {
		last = nil
		for _, n := range nodes {
			info, err := n.ClusterInfo(ctx).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = errors.New("cluster_state is not ok")
			}
			if err == nil {
				var ranges []redis.ClusterSlot
				ranges, err = n.ClusterSlots(ctx).Result()
				if err == nil && len(ranges) != len(nodes) {
					err = fmt.Errorf("%s knows %d slot ranges of %d", n.Options().Addr, len(ranges), len(nodes))
				}
			}
			if err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis cluster not ready: %w", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stopShared ends the shared cluster, if one was started.
func stopShared() {
	if sharedCluster != nil {
		sharedCluster.stop()
	}
}

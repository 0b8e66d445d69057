package redistest

import (
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestCluster: the launched cluster has three masters sharing the slots,
// a cluster client reaches keys on all of them, and it is a real cluster:
// a multi-key command across slots fails with CROSSSLOT.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := NewCluster(t)
	require.Len(t, c.Addrs, ClusterMasters)
	cc := c.Client(t)
	ctx := t.Context()

	owners := map[string]bool{}
	for i := range 30 {
		k := fmt.Sprintf("k%d", i)
		require.NoError(t, cc.Set(ctx, k, i, 0).Err())
		slot, err := cc.ClusterKeySlot(ctx, k).Result()
		require.NoError(t, err)
		for _, r := range cc.ClusterSlots(ctx).Val() {
			if int64(r.Start) <= slot && slot <= int64(r.End) {
				owners[r.Nodes[0].Addr] = true
			}
		}
	}
	require.Len(t, owners, ClusterMasters, "30 keys land on every master")

	n := redis.NewClient(&redis.Options{Addr: c.Addrs[0]})
	defer n.Close()
	err := n.MGet(ctx, "{a}x", "{b}x").Err()
	require.ErrorContains(t, err, "CROSSSLOT")

	require.Same(t, SharedCluster(t), SharedCluster(t), "one shared cluster per package")
}

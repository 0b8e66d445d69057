package rdb

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// legacyFamilies are the per-task key families that had no hash tag before
// certmail ran on Redis Cluster: the legacy name is the prefix followed by
// the task ID, the new one (the key builder) the prefix followed by {ID}.
var legacyFamilies = []struct {
	prefix string
	key    func(id string) string
}{
	{Prefix + "dead:", DeadKey},
	{Prefix + "attempts:", AttemptsKey},
	{Prefix + "tomb:", TombKey},
	{Prefix + "deadclaim:", DeadClaimKey},
}

// MigrateLegacy moves every per-task key left under its legacy, untagged
// name (LegacyDeadKey and friends, written by certmail before it ran on Redis
// Cluster) to its tagged name, and reports how many keys it moved. The
// dead-letter index kept its name and holds task IDs, so it needs nothing.
// It also returns the IDs of all dead-letter records it saw.
//
// It SCANs the keyspace (every master of a cluster) for the four families,
// so it is run once per process, not per request: the first sweep of a
// worker and every dlq command run it. Each key moves on its own: on a
// single Redis in one script (migrateScript, atomic), on a cluster, where
// the two names live in different slots, step by step: a string is copied
// with SET NX (keeping its expiry) and the legacy key deleted, so running
// again after a crash between the two only deletes; a history is put in
// front of the new one and the legacy key deleted, so a crash between the
// two can repeat its entries in the history once (nothing is lost).
// Running it twice, or on several processes at once, moves each key once.
func (r *Client) MigrateLegacy(ctx context.Context) (Migrated, error) {
	var mu sync.Mutex
	var m Migrated
	scan := func(ctx context.Context, node scanner) error {
		for i, f := range legacyFamilies {
			it := node.Scan(ctx, 0, f.prefix+"*", 1000).Iterator()
			for it.Next(ctx) {
				id := strings.TrimPrefix(it.Val(), f.prefix)
				if i == 0 && len(id) > 2 && id[0] == '{' && id[len(id)-1] == '}' {
					mu.Lock()
					m.DeadIDs = append(m.DeadIDs, id[1:len(id)-1])
					mu.Unlock()
				}
				if id == "" || strings.ContainsAny(id, "{:") {
					continue // a tagged key (or not a task's)
				}
				n, err := r.migrateKey(ctx, it.Val(), f.key(id))
				if err != nil {
					return err
				}
				mu.Lock()
				m.Moved += n
				if i == 0 && n == 1 {
					m.DeadIDs = append(m.DeadIDs, id)
				}
				mu.Unlock()
			}
			if err := it.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if cc, ok := r.raw().(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, r.c)
	}
	mu.Lock()
	defer mu.Unlock()
	// SCAN may return a key twice, and a moved record is met again under
	// its new name.
	slices.Sort(m.DeadIDs)
	m.DeadIDs = slices.Compact(m.DeadIDs)
	return m, err
}

// Migrated is what MigrateLegacy did and found.
type Migrated struct {
	// Moved is the number of keys moved to their tagged names.
	Moved int
	// DeadIDs are the IDs of every dead-letter record found, moved or
	// already tagged, for the caller to check the index against (a scan is
	// the only way to find a record whose index entry was never written).
	DeadIDs []string
}

// scanner is a client MigrateLegacy can SCAN: one node.
type scanner interface {
	Scan(ctx context.Context, cursor uint64, match string, count int64) *redis.ScanCmd
}

// migrateKey moves one legacy key (see MigrateLegacy); it returns 1 when
// it moved it.
func (r *Client) migrateKey(ctx context.Context, old, key string) (int, error) {
	if _, ok := r.raw().(*redis.ClusterClient); !ok {
		n, err := migrateScript.Eval(ctx, r.c, []string{old, key}).Int()
		return max(n, 0), err
	}
	typ, err := r.c.Type(ctx, old).Result()
	if err != nil {
		return 0, err
	}
	ttl, err := r.c.PTTL(ctx, old).Result()
	if err != nil {
		return 0, err
	}
	switch typ {
	case "none":
		return 0, nil
	case "string":
		v, err := r.c.Get(ctx, old).Result()
		if errors.Is(err, redis.Nil) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		exp := ttl
		if exp < 0 {
			exp = 0 // no expiry
		}
		if err := r.c.SetNX(ctx, key, v, exp).Err(); err != nil {
			return 0, err
		}
	case "list":
		newTTL, err := r.c.PTTL(ctx, key).Result()
		if err != nil {
			return 0, err
		}
		vals, err := r.c.LRange(ctx, old, 0, -1).Result()
		if err != nil {
			return 0, err
		}
		if len(vals) > 0 {
			rev := make([]any, len(vals))
			for i, v := range vals {
				rev[len(vals)-1-i] = v
			}
			if err := r.c.LPush(ctx, key, rev...).Err(); err != nil {
				return 0, err
			}
		}
		switch {
		case ttl == -1 || newTTL == -1:
			err = r.c.Persist(ctx, key).Err()
		case ttl > newTTL:
			err = r.c.PExpire(ctx, key, ttl).Err()
		}
		if err != nil {
			return 0, err
		}
	default:
		return 0, nil // not ours to move
	}
	return 1, r.c.Del(ctx, old).Err()
}

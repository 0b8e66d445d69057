package rdb

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestSlotsNeverMoreThanCap: goroutines racing for a semaphore of 3 slots
// are never granted more than 3 at once (counted by the holders
// themselves), and every one is granted in the end.
func TestSlotsNeverMoreThanCap(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		r := New(b.Client(t))
		const capacity, workers, rounds = 3, 12, 5
		var held, most, grants atomic.Int64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rounds {
					token := strconv.Itoa(w) + "-" + strconv.Itoa(i)
					for {
						ok, wait, err := r.AcquireSlot(t.Context(), "opensrs", "h", token, capacity, time.Minute)
						if err != nil {
							t.Error(err)
							return
						}
						if ok {
							break
						}
						if wait <= 0 || wait > time.Minute {
							t.Errorf("wait %s: want the earliest lease's remainder", wait)
							return
						}
						time.Sleep(time.Millisecond)
					}
					n := held.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					grants.Add(1)
					time.Sleep(2 * time.Millisecond)
					held.Add(-1)
					if err := r.ReleaseSlot(t.Context(), "opensrs", "h", token); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int64(workers*rounds), grants.Load())
		require.Equal(t, int64(capacity), most.Load(), "the cap was reached, never passed")
	})
}

// TestSlotExpiredLeaseFrees: a holder that never releases (a killed worker)
// keeps its slot only for its lease; the full semaphore tells how long that
// is, and the slot is granted again once it has passed.
func TestSlotExpiredLeaseFrees(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		r := New(b.Client(t))
		ctx := t.Context()
		ok, _, err := r.AcquireSlot(ctx, "opensrs", "h", "dead", 1, 300*time.Millisecond)
		require.NoError(t, err)
		require.True(t, ok)
		ok, wait, err := r.AcquireSlot(ctx, "opensrs", "h", "next", 1, time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "the cap of 1 is held")
		require.Positive(t, wait)
		require.LessOrEqual(t, wait, 300*time.Millisecond, "the wait is what is left of the lease")
		require.Eventually(t, func() bool {
			ok, _, err := r.AcquireSlot(ctx, "opensrs", "h", "next", 1, time.Minute)
			require.NoError(t, err)
			return ok
		}, 10*time.Second, 20*time.Millisecond, "the expired lease never freed its slot")
		n, err := r.SlotsHeld(ctx, "opensrs", "h")
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "only the new holder")

		pttl, err := b.Client(t).PTTL(ctx, SlotsKey("opensrs", "h")).Result()
		require.NoError(t, err)
		require.Positive(t, pttl, "the key expires with its last lease")
		require.LessOrEqual(t, pttl, time.Minute)
	})
}

// TestSlotReleaseOnlyOwn: releasing frees the caller's slot and no other;
// a token released twice, or one that never held a slot, frees nothing;
// acquiring again with a held token renews it, never takes a second slot.
func TestSlotReleaseOnlyOwn(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		r := New(b.Client(t))
		ctx := t.Context()
		for _, tok := range []string{"a", "b", "a"} {
			ok, _, err := r.AcquireSlot(ctx, "digicert", "h", tok, 2, time.Minute)
			require.NoError(t, err)
			require.True(t, ok, tok)
		}
		ok, _, err := r.AcquireSlot(ctx, "digicert", "h", "c", 2, time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "a renewed holder still holds one slot of two")

		require.NoError(t, r.ReleaseSlot(ctx, "digicert", "h", "stranger"))
		ok, _, err = r.AcquireSlot(ctx, "digicert", "h", "c", 2, time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "a stranger's release freed nothing")

		require.NoError(t, r.ReleaseSlot(ctx, "digicert", "h", "a"))
		require.NoError(t, r.ReleaseSlot(ctx, "digicert", "h", "a"))
		n, err := r.SlotsHeld(ctx, "digicert", "h")
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "a's release, twice, freed a's slot only")
		ok, _, err = r.AcquireSlot(ctx, "digicert", "h", "c", 2, time.Minute)
		require.NoError(t, err)
		require.True(t, ok)

		other, _, err := r.AcquireSlot(ctx, "digicert", "other", "x", 2, time.Minute)
		require.NoError(t, err)
		require.True(t, other, "another credential has its own semaphore")
	})
}

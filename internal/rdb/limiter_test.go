package rdb

import (
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

const testCred = "0123456789abcdef"

// maxInWindow is the most grants in any window (g-per, g] ending at a
// grant g; times sorted.
func maxInWindow(times []time.Time, per time.Duration) int {
	most, lo := 0, 0
	for hi, g := range times {
		for !times[lo].After(g.Add(-per)) {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

// TestLimiterKeys: the grant logs live under RateLimitKey, inside
// certmail:, one sorted set per rule sharing one hash tag, each expiring
// after its period.
func TestLimiterKeys(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		l := New(c).NewLimiter()
		rules := []LimitRule{{N: 2, Per: time.Minute}, {N: 5, Per: time.Hour}}
		for range 2 {
			res, err := l.Reserve(t.Context(), "digicert", testCred, rules)
			require.NoError(t, err)
			require.Zero(t, res.Wait)
		}
		res, err := l.Reserve(t.Context(), "digicert", testCred, rules)
		require.NoError(t, err)
		require.Positive(t, res.Wait, "the state is kept across calls: the minute's 2 are spent")
		require.LessOrEqual(t, res.Wait, time.Minute)
		require.Equal(t, 0, res.Rule)

		keys, err := c.Keys(t.Context(), "*").Result()
		require.NoError(t, err)
		sort.Strings(keys)
		require.Equal(t, []string{RateLimitKey("digicert", testCred, 0), RateLimitKey("digicert", testCred, 1)}, keys)
		for i, k := range keys {
			typ, err := c.Type(t.Context(), k).Result()
			require.NoError(t, err)
			require.Equal(t, "zset", typ)
			n, err := c.ZCard(t.Context(), k).Result()
			require.NoError(t, err)
			require.EqualValues(t, 2, n, "only grants are logged")
			ttl, err := c.PTTL(t.Context(), k).Result()
			require.NoError(t, err)
			require.Positive(t, ttl, "grant logs expire")
			require.LessOrEqual(t, ttl, rules[i].Per)
		}
	})
}

// TestReserveHoldsInEveryWindow: goroutines hammering one credential with
// 10/1s and 25/3s never get more than 10 grants into any 1-s window, nor
// more than 25 into any 3-s window, counted over the window ending at each
// grant, at the grant times Redis decided. A GCRA with Burst = N lets up to
// twice that through.
func TestReserveHoldsInEveryWindow(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		rules := []LimitRule{{N: 10, Per: time.Second}, {N: 25, Per: 3 * time.Second}}
		var mu sync.Mutex
		var grants []time.Time
		stop := time.Now().Add(4500 * time.Millisecond)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := New(c).NewLimiter() // one per worker, as each process has
				for time.Now().Before(stop) {
					res, err := l.Reserve(t.Context(), "digicert", testCred, rules)
					if err != nil {
						errs <- err
						return
					}
					if res.Wait == 0 {
						mu.Lock()
						grants = append(grants, res.At)
						mu.Unlock()
						continue
					}
					// Come back sooner than told, so the edges are probed too.
					time.Sleep(min(res.Wait/2, 20*time.Millisecond))
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		sort.Slice(grants, func(i, j int) bool { return grants[i].Before(grants[j]) })
		require.Greater(t, len(grants), 25, "the run outlasted the 3-s rule's first window")
		require.LessOrEqual(t, maxInWindow(grants, time.Second), 10, "some 1-s window held more than 10")
		require.LessOrEqual(t, maxInWindow(grants, 3*time.Second), 25, "some 3-s window held more than 25")
	})
}

// TestRefusalTakesNothing: when one rule refuses, the slot is not taken
// from the other either, and the wait returned is exact: it ends when the
// blocking grant leaves its window, and a call after it is granted.
func TestRefusalTakesNothing(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		l := New(c).NewLimiter()
		rules := []LimitRule{{N: 5, Per: time.Hour}, {N: 2, Per: 800 * time.Millisecond}}
		logLen := func(rule int) int {
			times, err := l.RateLimitLog(t.Context(), "opensrs", testCred, rule)
			require.NoError(t, err)
			return len(times)
		}
		var first time.Time
		for i := range 2 {
			res, err := l.Reserve(t.Context(), "opensrs", testCred, rules)
			require.NoError(t, err)
			require.Zero(t, res.Wait)
			if i == 0 {
				first = res.At
			}
		}
		var res Reservation
		for range 10 {
			var err error
			res, err = l.Reserve(t.Context(), "opensrs", testCred, rules)
			require.NoError(t, err)
			require.Positive(t, res.Wait)
			require.Equal(t, 1, res.Rule, "the 800-ms rule refused")
			require.Equal(t, first.Add(800*time.Millisecond), res.At.Add(res.Wait),
				"the wait ends exactly when the first grant leaves the 800-ms window")
		}
		require.Equal(t, 2, logLen(0), "refusals by the 800-ms rule took nothing from the hour's")
		require.Equal(t, 2, logLen(1))

		time.Sleep(res.Wait)
		got, err := l.Reserve(t.Context(), "opensrs", testCred, rules)
		require.NoError(t, err)
		require.Zero(t, got.Wait, "the slot is free once the wait has passed")
		require.Equal(t, 3, logLen(0))

		// Now the hour's rule refuses: the 800-ms rule's log stays as it was.
		time.Sleep(800 * time.Millisecond)
		for range 2 {
			got, err = l.Reserve(t.Context(), "opensrs", testCred, rules)
			require.NoError(t, err)
			require.Zero(t, got.Wait)
		}
		before := logLen(1)
		got, err = l.Reserve(t.Context(), "opensrs", testCred, rules)
		require.NoError(t, err)
		require.Equal(t, 0, got.Rule)
		require.Greater(t, got.Wait, 59*time.Minute)
		require.Equal(t, first.Add(time.Hour), got.At.Add(got.Wait))
		require.Equal(t, before, logLen(1), "the hour's refusal took nothing from the 800-ms rule")
		require.Equal(t, 5, logLen(0))
	})
}

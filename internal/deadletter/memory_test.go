package deadletter_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter/deadlettertest"
	"github.com/certmail/certmail/internal/providers"
	certrdb "github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// familyRE turns a key into its family: the per-task part becomes "<id>".
var familyRE = regexp.MustCompile(`([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64})`)

// footprint is the memory of every key in one logical database, by family,
// as Redis itself reports it (MEMORY USAGE … SAMPLES 0: every element
// counted, not sampled). Per database, so parallel tests on the same
// server do not disturb it, unlike INFO's used_memory.
type footprint struct {
	bytes map[string]int64
	keys  map[string]int
	ttl   map[string]bool // family has a TTL on every key
}

func measure(t *testing.T, rdb *redis.Client) footprint {
	t.Helper()
	ctx := t.Context()
	f := footprint{bytes: map[string]int64{}, keys: map[string]int{}, ttl: map[string]bool{}}
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		fam := familyRE.ReplaceAllString(k, "<id>")
		// One row per family, not per queue: per-task figures are averages
		// over the mix of both providers.
		fam = strings.NewReplacer("{opensrs}", "{queue}", "{digicert}", "{queue}").Replace(fam)
		n, err := rdb.MemoryUsage(ctx, k, 0).Result()
		if err == redis.Nil {
			continue // expired or deleted while scanning
		}
		require.NoError(t, err)
		ttl, err := rdb.PTTL(ctx, k).Result()
		require.NoError(t, err)
		if _, seen := f.ttl[fam]; !seen {
			f.ttl[fam] = true
		}
		f.ttl[fam] = f.ttl[fam] && ttl > 0
		f.bytes[fam] += n
		f.keys[fam]++
	}
	require.NoError(t, iter.Err())
	return f
}

// delta is after minus before, per family.
func (f footprint) delta(before footprint) map[string]int64 {
	out := map[string]int64{}
	for fam, n := range f.bytes {
		if d := n - before.bytes[fam]; d != 0 {
			out[fam] = d
		}
	}
	return out
}

func sum(m map[string]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// TestRedisMemoryPerTask measures what one task costs in Redis once it has
// completed, and once it has died (after one attempt and after three), by
// key family, then derives the steady state at 10k, 100k and 1M tasks a day
// with the default retentions. The README's memory table quotes its
// output (written to $CERTMAIL_ARTIFACTS_DIR/redis-memory.md in CI).
//
// It also asserts what keeps memory bounded on the success path: every
// certmail key a completed task leaves behind expires on its own.
func TestRedisMemoryPerTask(t *testing.T) {
	b := redistest.Real(t)
	rdb := b.Client(t)
	ctx := t.Context()
	enq := tasks.NewEnqueuer(rdb)
	t.Cleanup(func() { _ = enq.Close() })

	const n = 400
	var seq int
	enqueue := func(maxRetry int) {
		o := tasks.DefaultOptions()
		o.MaxRetry = maxRetry
		for i := range n {
			seq++
			var p tasks.Payload
			if i%2 == 0 {
				p = tasks.NewOpenSRSPayload(strconv.Itoa(1_000_000+seq), "ticket-"+strconv.Itoa(40_000+seq), false)
			} else {
				p = &tasks.DigiCertPayload{OrderID: strconv.Itoa(2_000_000 + seq), Locale: "en", Reference: "ticket-" + strconv.Itoa(40_000+seq),
					DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "shop.example.com", Email: "admin@shop.example.com"}}}
			}
			_, err := enq.Enqueue(ctx, p, o)
			require.NoError(t, err)
		}
	}

	base := measure(t, rdb)
	enqueue(tasks.DefaultMaxRetry)
	deadlettertest.Drain(t, rdb, deadlettertest.Resender{}, 20)
	afterOK := measure(t, rdb)
	completed := afterOK.delta(base)
	for fam, ok := range afterOK.ttl {
		if strings.HasPrefix(fam, certrdb.Prefix) && fam != certrdb.OutcomesKey {
			require.True(t, ok, "%s: every key a completed task leaves must expire", fam)
		}
	}

	enqueue(0)
	deadlettertest.Drain(t, rdb, deadlettertest.Resender{Default: deadlettertest.Permanent(404, "order not found")}, 20)
	afterDead1 := measure(t, rdb)
	dead1 := afterDead1.delta(afterOK)

	enqueue(2)
	deadlettertest.Drain(t, rdb, deadlettertest.Resender{Default: deadlettertest.Transient(503, "service unavailable")}, 20)
	dead3 := measure(t, rdb).delta(afterDead1)

	per := func(m map[string]int64, fam string) float64 { return float64(m[fam]) / n }
	fams := map[string]bool{}
	for _, m := range []map[string]int64{completed, dead1, dead3} {
		for f := range m {
			fams[f] = true
		}
	}
	names := make([]string, 0, len(fams))
	for f := range fams {
		names = append(names, f)
	}
	sort.Strings(names)

	var out strings.Builder
	fmt.Fprintf(&out, "Measured by TestRedisMemoryPerTask (%d tasks each, redis-server MEMORY USAGE, bytes per task):\n\n", n)
	fmt.Fprintf(&out, "| key family | completed | dead, 1 attempt | dead, 3 attempts |\n|---|---:|---:|---:|\n")
	for _, f := range names {
		if per(completed, f) < 0.5 && per(dead1, f) < 0.5 && per(dead3, f) < 0.5 {
			continue // counters and the like: fixed size, not per task
		}
		fmt.Fprintf(&out, "| `%s` | %.0f | %.0f | %.0f |\n", f, per(completed, f), per(dead1, f), per(dead3, f))
	}
	c, d1, d3 := float64(sum(completed))/n, float64(sum(dead1))/n, float64(sum(dead3))/n
	fmt.Fprintf(&out, "| **total** | **%.0f** | **%.0f** | **%.0f** |\n\n", c, d1, d3)

	// Steady state with the defaults. Each family lives as long as its own
	// bound: a completed task's keys for the 168h retention (asynq
	// --retention and OUTCOME_RETENTION), the dedup mark for its 10m window,
	// the outcome stream up to 100,000 entries, a dead letter's record and
	// history for DEADLETTER_RETENTION (90 days), its asynq copy at most
	// 10,000 per queue. The death rate is an assumption, stated in the table.
	const (
		retentionDays = 7.0
		deadDays      = 90.0
		deathRate     = 0.01
		streamCap     = 100_000
		archiveCap    = 10_000 * 2 // per queue, two queues
	)
	var okBytes, dedup, stream, deadOwn, deadAsynq float64
	for f := range fams {
		switch {
		case f == certrdb.OutcomesKey:
			stream = per(completed, f)
		case strings.HasPrefix(f, certrdb.DedupKey("")):
			dedup = per(completed, f)
		case strings.HasPrefix(f, "asynq:") && (strings.Contains(f, ":archived") || strings.Contains(f, ":t:")):
			deadAsynq += per(dead3, f)
			okBytes += per(completed, f)
		case strings.HasPrefix(f, certrdb.DeadIndexKey), strings.HasPrefix(f, certrdb.AttemptsKey("")):
			deadOwn += per(dead3, f)
			okBytes += per(completed, f)
		default:
			okBytes += per(completed, f)
		}
	}
	fmt.Fprintf(&out, "Steady state with the defaults (completed tasks kept %.0f days, dedup marks 10 minutes, the outcome stream capped at %d entries; "+
		"assumed: %.0f%% of tasks die after 3 attempts, their records kept %.0f days, asynq's archive capped at 10,000 per queue):\n\n",
		retentionDays, streamCap, deathRate*100, deadDays)
	fmt.Fprintf(&out, "| tasks/day | completed tasks | dedup marks | outcome stream | dead letters | total |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, perDay := range []float64{10_000, 100_000, 1_000_000} {
		ok := perDay * retentionDays * okBytes
		dd := perDay * 10 / (24 * 60) * dedup
		st := streamCap * stream
		deadN := perDay * deathRate * deadDays
		dl := deadN*deadOwn + min(deadN, archiveCap)*deadAsynq
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s | %s |\n", human(perDay), mib(ok), mib(dd), mib(st), mib(dl), mib(ok+dd+st+dl))
	}
	t.Log("\n" + out.String())
	if dir := os.Getenv("CERTMAIL_ARTIFACTS_DIR"); dir != "" {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "redis-memory.md"), []byte(out.String()), 0o644))
	}

	require.Positive(t, c, "completed tasks use memory")
	require.Greater(t, d3, d1, "each extra attempt of a dead task costs memory")
}

func human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.0fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func mib(b float64) string {
	if b >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	}
	return fmt.Sprintf("%.0f MiB", b/(1<<20))
}

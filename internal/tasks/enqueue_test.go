package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
)

type enqueueBundle struct {
	rdb  redis.UniversalClient
	enq  *Enqueuer
	insp *asynq.Inspector
}

func setupEnqueue(t *testing.T, b redistest.Backend) *enqueueBundle {
	t.Helper()
	rdb := b.Universal(t)
	enq := NewEnqueuer(rdb)
	t.Cleanup(func() { _ = enq.Close() })
	return &enqueueBundle{rdb: rdb, enq: enq, insp: asynq.NewInspectorFromRedisClient(rdb)}
}

// taskIDs lists the IDs of every task of queue in any state.
func (eb *enqueueBundle) taskIDs(t *testing.T, queue string) []string {
	t.Helper()
	var ids []string
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		eb.insp.ListPendingTasks, eb.insp.ListScheduledTasks, eb.insp.ListArchivedTasks, eb.insp.ListCompletedTasks,
	} {
		infos, err := list(queue)
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return nil
		}
		require.NoError(t, err)
		for _, i := range infos {
			ids = append(ids, i.ID)
		}
	}
	return ids
}

func testOptions(window time.Duration) Options {
	return Options{MaxRetry: 3, Timeout: 30 * time.Second, Retention: time.Hour, DedupWindow: window}
}

func TestEnqueueDedup(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		window    time.Duration
		first     Payload
		second    Payload
		wantDup   bool
		wantTasks int
	}{
		{"same payload inside window", time.Minute, NewOpenSRSPayload("1", "a", false), NewOpenSRSPayload("1", "a", false), true, 1},
		{"different reference", time.Minute, NewOpenSRSPayload("1", "a", false), NewOpenSRSPayload("1", "b", false), false, 2},
		{"different order", time.Minute, NewOpenSRSPayload("1", "a", false), NewOpenSRSPayload("2", "a", false), false, 2},
		{"same order, other task type", time.Minute, NewOpenSRSPayload("1", "a", false), NewOpenSRSPayload("1", "a", true), false, 2},
		{"window 0 turns dedup off", 0, NewOpenSRSPayload("1", "a", false), NewOpenSRSPayload("1", "a", false), false, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				eb := setupEnqueue(t, b)
				first, err := eb.enq.Enqueue(t.Context(), tc.first, testOptions(tc.window))
				require.NoError(t, err)
				require.False(t, first.Duplicate)
				require.NotEmpty(t, first.ID)

				second, err := eb.enq.Enqueue(t.Context(), tc.second, testOptions(tc.window))
				require.NoError(t, err)
				require.Equal(t, tc.wantDup, second.Duplicate)
				if tc.wantDup {
					require.Equal(t, first.ID, second.ID)
				} else {
					require.NotEqual(t, first.ID, second.ID)
				}
				require.Len(t, eb.taskIDs(t, QueueOpenSRS), tc.wantTasks)
			})
		})
	}
}

func TestEnqueueDedupWindowExpires(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		finish func(t *testing.T, eb *enqueueBundle, id string)
	}{
		{"first archived", func(t *testing.T, eb *enqueueBundle, id string) {
			require.NoError(t, eb.insp.ArchiveTask(QueueOpenSRS, id))
		}},
		{"first completed", func(t *testing.T, eb *enqueueBundle, id string) {
			srv := asynq.NewServerFromRedisClient(eb.rdb, asynq.Config{
				Concurrency: 1, Queues: map[string]int{QueueOpenSRS: 1},
				TaskCheckInterval: 100 * time.Millisecond, LogLevel: asynq.ErrorLevel,
			})
			require.NoError(t, srv.Start(asynq.HandlerFunc(func(_ context.Context, _ *asynq.Task) error { return nil })))
			defer srv.Shutdown()
			require.Eventually(t, func() bool {
				info, err := eb.insp.GetTaskInfo(QueueOpenSRS, id)
				return err == nil && info.State == asynq.TaskStateCompleted
			}, 20*time.Second, 50*time.Millisecond)
		}},
		{"first still pending", func(*testing.T, *enqueueBundle, string) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				eb := setupEnqueue(t, b)
				p := NewOpenSRSPayload("77", "window", false)
				opts := testOptions(time.Second)

				first, err := eb.enq.Enqueue(t.Context(), p, opts)
				require.NoError(t, err)
				tc.finish(t, eb, first.ID)

				if b.Mini != nil {
					b.Mini.FastForward(2 * time.Second)
				} else {
					time.Sleep(1100 * time.Millisecond)
				}

				second, err := eb.enq.Enqueue(t.Context(), p, opts)
				require.NoError(t, err)
				require.False(t, second.Duplicate)
				require.NotEqual(t, first.ID, second.ID)
				// The new mark dedupes again (checked at once: it lives 1s).
				third, err := eb.enq.Enqueue(t.Context(), p, opts)
				require.NoError(t, err)
				require.Equal(t, Enqueued{ID: second.ID, Duplicate: true}, third)

				require.ElementsMatch(t, []string{first.ID, second.ID}, eb.taskIDs(t, QueueOpenSRS))
			})
		})
	}
}

func TestEnqueueDedupMark(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		p := NewOpenSRSPayload("88", "", false)
		e, err := eb.enq.Enqueue(t.Context(), p, testOptions(10*time.Minute))
		require.NoError(t, err)

		body, err := json.Marshal(p)
		require.NoError(t, err)
		key := rdb.DedupKey(dedupHash(p.Type(), body))
		v, err := eb.rdb.Get(t.Context(), key).Result()
		require.NoError(t, err)
		id, at, stamped := parseMark(v)
		require.True(t, stamped, "the mark holds the time it was set: %q", v)
		require.Equal(t, e.ID, id, "the mark holds the first task's ID")
		require.WithinDuration(t, time.Now(), at, time.Minute)
		ttl, err := eb.rdb.TTL(t.Context(), key).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, 9*time.Minute)
		require.LessOrEqual(t, ttl, 10*time.Minute)
	})
}

func TestEnqueueRaw(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		p := NewOpenSRSPayload("99", "raw", false)
		first, err := eb.enq.Enqueue(t.Context(), p, testOptions(time.Hour))
		require.NoError(t, err)

		// Same request as bytes, spaced differently: kept byte for byte and
		// not deduplicated.
		payload := []byte(`{"reference": "raw", "order_id": "99"}`)
		id, err := eb.enq.EnqueueRaw(t.Context(), TypeOpenSRSResendCertEmail, payload, testOptions(time.Hour))
		require.NoError(t, err)
		require.NotEqual(t, first.ID, id)

		info, err := eb.insp.GetTaskInfo(QueueOpenSRS, id)
		require.NoError(t, err)
		require.Equal(t, payload, info.Payload)
		require.Equal(t, TypeOpenSRSResendCertEmail, info.Type)
		require.Equal(t, 3, info.MaxRetry)
		require.Equal(t, 0, info.Retried)

		// Exactly the bytes Enqueue would build: still not deduplicated.
		canonical, err := json.Marshal(p)
		require.NoError(t, err)
		id2, err := eb.enq.EnqueueRaw(t.Context(), p.Type(), canonical, testOptions(time.Hour))
		require.NoError(t, err)
		require.NotEqual(t, first.ID, id2)
		require.Len(t, eb.taskIDs(t, QueueOpenSRS), 3)

		// The dedup mark still names the first task.
		again, err := eb.enq.Enqueue(t.Context(), p, testOptions(time.Hour))
		require.NoError(t, err)
		require.Equal(t, Enqueued{ID: first.ID, Duplicate: true}, again)
	})
}

func TestEnqueueRejects(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)

		_, err := eb.enq.Enqueue(t.Context(), NewOpenSRSPayload("x", "", false), testOptions(time.Minute))
		requireFieldErr(t, err, "order_id")

		_, err = eb.enq.Enqueue(t.Context(), NewOpenSRSPayload("1", "", false), Options{Timeout: 500 * time.Millisecond})
		requireFieldErr(t, err, "timeout")

		_, err = eb.enq.EnqueueRaw(t.Context(), TypeOpenSRSResendCertEmail, []byte(`{"order_id":"abc"}`), testOptions(0))
		requireFieldErr(t, err, "order_id")

		_, err = eb.enq.EnqueueRaw(t.Context(), "nope:task", []byte(`{"order_id":"1"}`), testOptions(0))
		require.ErrorContains(t, err, "unknown task type")

		_, err = eb.enq.EnqueueRaw(t.Context(), TypeOpenSRSResendCertEmail, []byte(`{"order_id":"1"}`), Options{Timeout: time.Second, MaxRetry: -1})
		requireFieldErr(t, err, "max-retry")

		queues, err := eb.insp.Queues()
		require.NoError(t, err)
		require.Empty(t, queues, "nothing was enqueued")
		keys, err := eb.rdb.Keys(t.Context(), rdb.Prefix+"*").Result()
		require.NoError(t, err)
		require.Empty(t, keys, "no dedup mark left behind")
	})
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()

	valid := DefaultOptions()
	tests := []struct {
		name      string
		mutate    func(o *Options)
		wantField string
	}{
		{"defaults", func(*Options) {}, ""},
		{"max retry 0", func(o *Options) { o.MaxRetry = 0 }, ""},
		{"max retry negative", func(o *Options) { o.MaxRetry = -1 }, "max-retry"},
		{"timeout 1s", func(o *Options) { o.Timeout = time.Second }, ""},
		{"timeout zero", func(o *Options) { o.Timeout = 0 }, "timeout"},
		{"timeout below 1s", func(o *Options) { o.Timeout = 999 * time.Millisecond }, "timeout"},
		{"delay negative", func(o *Options) { o.Delay = -time.Second }, "delay"},
		{"delay positive", func(o *Options) { o.Delay = time.Minute }, ""},
		{"dedup window negative", func(o *Options) { o.DedupWindow = -time.Second }, "dedup-window"},
		{"dedup window below 1s", func(o *Options) { o.DedupWindow = 500 * time.Millisecond }, "dedup-window"},
		{"dedup window off", func(o *Options) { o.DedupWindow = 0 }, ""},
		{"retention negative", func(o *Options) { o.Retention = -time.Hour }, "retention"},
		{"retention zero means default", func(o *Options) { o.Retention = 0 }, ""},
		{"timeout 1500ms is not stored exactly", func(o *Options) { o.Timeout = 1500 * time.Millisecond }, "timeout"},
		{"timeout 90s", func(o *Options) { o.Timeout = 90 * time.Second }, ""},
		{"delay 2.5s is not stored exactly", func(o *Options) { o.Delay = 2500 * time.Millisecond }, "delay"},
		{"delay 1ns", func(o *Options) { o.Delay = 1 }, "delay"},
		{"retention with a fraction of a second", func(o *Options) { o.Retention = time.Hour + time.Millisecond }, "retention"},
		{"dedup window with microseconds", func(o *Options) { o.DedupWindow = time.Second + time.Microsecond }, "dedup-window"},
		{"dedup window 1.5s", func(o *Options) { o.DedupWindow = 1500 * time.Millisecond }, ""},
		{"retention shorter than the dedup window", func(o *Options) { o.Retention = 5 * time.Minute }, "retention"},
		{"retention equal to the dedup window", func(o *Options) { o.Retention = o.DedupWindow }, ""},
		{"short retention without dedup", func(o *Options) { o.Retention, o.DedupWindow = time.Second, 0 }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := valid
			tc.mutate(&o)
			err := o.Validate()
			if tc.wantField == "" {
				require.NoError(t, err)
				return
			}
			requireFieldErr(t, err, tc.wantField)
		})
	}

	t.Run("defaults are documented values", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, Options{MaxRetry: 10, Timeout: time.Minute, Retention: outcome.DefaultRetention, DedupWindow: 10 * time.Minute}, DefaultOptions())
	})
}

func TestEnqueueTaskOptions(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name          string
		payload       Payload
		opts          Options
		wantQueue     string
		wantState     asynq.TaskState
		wantRetention time.Duration
	}{
		{"opensrs", NewOpenSRSPayload("1", "", false),
			Options{MaxRetry: 4, Timeout: 90 * time.Second, Retention: 2 * time.Hour}, QueueOpenSRS, asynq.TaskStatePending, 2 * time.Hour},
		{"digicert", &DigiCertPayload{OrderID: "2", Locale: "en"},
			Options{MaxRetry: 0, Timeout: 5 * time.Second, Retention: 30 * time.Minute, DedupWindow: time.Minute}, QueueDigiCert, asynq.TaskStatePending, 30 * time.Minute},
		{"retention 0 is the default", NewOpenSRSPayload("3", "", true),
			Options{MaxRetry: 10, Timeout: time.Minute}, QueueOpenSRS, asynq.TaskStatePending, outcome.DefaultRetention},
		{"delayed", NewOpenSRSPayload("4", "", false),
			Options{MaxRetry: 1, Timeout: time.Minute, Delay: time.Hour, Retention: time.Hour}, QueueOpenSRS, asynq.TaskStateScheduled, time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				eb := setupEnqueue(t, b)
				e, err := eb.enq.Enqueue(t.Context(), tc.payload, tc.opts)
				require.NoError(t, err)

				info, err := eb.insp.GetTaskInfo(tc.wantQueue, e.ID)
				require.NoError(t, err)
				require.Equal(t, e.ID, info.ID)
				require.Equal(t, tc.wantQueue, info.Queue)
				require.Equal(t, tc.payload.Type(), info.Type)
				require.Equal(t, tc.wantState, info.State)
				require.Equal(t, tc.opts.MaxRetry, info.MaxRetry)
				require.Equal(t, tc.opts.Timeout, info.Timeout)
				require.Equal(t, tc.wantRetention, info.Retention)
				want, err := json.Marshal(tc.payload)
				require.NoError(t, err)
				require.Equal(t, want, info.Payload)
				if tc.opts.Delay > 0 {
					require.WithinDuration(t, time.Now().Add(tc.opts.Delay), info.NextProcessAt, 5*time.Second)
				}
			})
		})
	}
}

func TestNewTask(t *testing.T) {
	t.Parallel()

	task, err := NewTask(NewOpenSRSPayload("5", "r", true), DefaultOptions(), "fixed-id")
	require.NoError(t, err)
	require.Equal(t, TypeOpenSRSResendApproveEmail, task.Type())
	require.JSONEq(t, `{"order_id":"5","reference":"r"}`, string(task.Payload()))

	_, err = NewTask(NewOpenSRSPayload("", "", false), DefaultOptions(), "")
	requireFieldErr(t, err, "order_id")
	_, err = NewTask(NewOpenSRSPayload("5", "", false), Options{Timeout: time.Second, Retention: -1}, "")
	requireFieldErr(t, err, "retention")
}

// markKey is the dedup mark's key for p.
func markKey(t *testing.T, p Payload) string {
	t.Helper()
	return rdb.DedupKey(markHash(t, p))
}

// markHash is the request hash the dedup mark of p is keyed by.
func markHash(t *testing.T, p Payload) string {
	t.Helper()
	body, err := json.Marshal(p)
	require.NoError(t, err)
	return dedupHash(p.Type(), body)
}

// requireTask asserts that task id exists in queue.
func (eb *enqueueBundle) requireTask(t *testing.T, queue, id string) {
	t.Helper()
	info, err := eb.insp.GetTaskInfo(queue, id)
	require.NoError(t, err, "task %s must exist", id)
	require.Equal(t, id, info.ID)
}

func TestTaskKeyMatchesAsynq(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		for _, delay := range []time.Duration{0, time.Hour} {
			o := testOptions(0)
			o.Delay = delay
			e, err := eb.enq.Enqueue(t.Context(), NewOpenSRSPayload("5", delay.String(), false), o)
			require.NoError(t, err)
			n, err := eb.rdb.Exists(t.Context(), rdb.AsynqTaskKey(QueueOpenSRS, e.ID)).Result()
			require.NoError(t, err)
			require.Equal(t, int64(1), n, "asynq keeps the task under rdb.AsynqTaskKey (delay %v)", delay)
		}
		gone := eb.taskIDs(t, QueueOpenSRS)[0]
		require.NoError(t, eb.insp.DeleteTask(QueueOpenSRS, gone))
		n, err := eb.rdb.Exists(t.Context(), rdb.AsynqTaskKey(QueueOpenSRS, gone)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "a deleted task leaves no key behind")
	})
}

// TestEnqueueMarkWithoutTask: a mark naming a task that does not exist (its
// request died between the mark and the enqueue) is never answered as a
// duplicate.
func TestEnqueueMarkWithoutTask(t *testing.T) {
	t.Parallel()

	const orphan = "00000000-0000-4000-8000-000000000001"
	tests := []struct {
		name       string
		mark       func(now time.Time) string
		ttl        time.Duration // of the planted mark; the window otherwise
		failedNote bool          // the first request noted its definite failure
		wantNew    bool          // the retry enqueues; else it is uncertain
	}{
		{name: "young mark: the first request may still be enqueueing",
			mark: func(now time.Time) string { return markValue(orphan, now.Add(-20*time.Second)) }},
		{name: "mark older than the grace is taken over", wantNew: true,
			mark: func(now time.Time) string { return markValue(orphan, now.Add(-DedupGrace-time.Second)) }},
		{name: "young mark of a request known to have failed is taken over", failedNote: true, wantNew: true,
			mark: func(now time.Time) string { return markValue(orphan, now.Add(-time.Second)) }},
		{name: "old plain-ID mark, young by its TTL", ttl: 10*time.Minute - 20*time.Second,
			mark: func(time.Time) string { return orphan }},
		{name: "old plain-ID mark, older than the grace by its TTL", ttl: 10*time.Minute - 2*DedupGrace, wantNew: true,
			mark: func(time.Time) string { return orphan }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				eb := setupEnqueue(t, b)
				p := NewOpenSRSPayload("31", "orphan", false)
				opts := testOptions(10 * time.Minute)
				key := markKey(t, p)
				ttl := tc.ttl
				if ttl == 0 {
					ttl = opts.DedupWindow
				}
				require.NoError(t, eb.rdb.Set(t.Context(), key, tc.mark(time.Now()), ttl).Err())
				if tc.failedNote {
					require.NoError(t, eb.rdb.Set(t.Context(), rdb.DedupFailedKey(markHash(t, p)), orphan, ttl).Err())
				}

				got, err := eb.enq.Enqueue(t.Context(), p, opts)
				if !tc.wantNew {
					var ue *UncertainError
					require.ErrorAs(t, err, &ue, "never a duplicate of a task that does not exist")
					require.Equal(t, orphan, ue.ID)
					require.Empty(t, eb.taskIDs(t, QueueOpenSRS))
					return
				}
				require.NoError(t, err)
				require.False(t, got.Duplicate)
				require.NotEqual(t, orphan, got.ID)
				eb.requireTask(t, QueueOpenSRS, got.ID)
				// The mark now names the new task, and dedupes again.
				again, err := eb.enq.Enqueue(t.Context(), p, opts)
				require.NoError(t, err)
				require.Equal(t, Enqueued{ID: got.ID, Duplicate: true}, again)
				require.Equal(t, []string{got.ID}, eb.taskIDs(t, QueueOpenSRS))
			})
		})
	}

	t.Run("plain-ID mark whose task exists is a duplicate", func(t *testing.T) {
		t.Parallel()
		redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
			eb := setupEnqueue(t, b)
			p := NewOpenSRSPayload("32", "", false)
			first, err := eb.enq.Enqueue(t.Context(), p, testOptions(time.Minute))
			require.NoError(t, err)
			require.NoError(t, eb.rdb.Set(t.Context(), markKey(t, p), first.ID, time.Minute).Err())
			again, err := eb.enq.Enqueue(t.Context(), p, testOptions(time.Minute))
			require.NoError(t, err)
			require.Equal(t, Enqueued{ID: first.ID, Duplicate: true}, again)
		})
	})

	t.Run("many retries take over one stale mark once", func(t *testing.T) {
		t.Parallel()
		redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
			eb := setupEnqueue(t, b)
			p := NewOpenSRSPayload("33", "", false)
			opts := testOptions(10 * time.Minute)
			require.NoError(t, eb.rdb.Set(t.Context(), markKey(t, p), markValue(orphan, time.Now().Add(-2*DedupGrace)), time.Minute).Err())
			const n = 8
			type answer struct {
				e   Enqueued
				err error
			}
			answers := make(chan answer, n)
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					e, err := eb.enq.Enqueue(t.Context(), p, opts)
					answers <- answer{e, err}
				})
			}
			wg.Wait()
			close(answers)
			var results []Enqueued
			for a := range answers {
				var ue *UncertainError
				if errors.As(a.err, &ue) { // read the winner's mark before its task existed
					results = append(results, Enqueued{ID: ue.ID, Duplicate: true})
					continue
				}
				require.NoError(t, a.err)
				results = append(results, a.e)
			}
			ids := eb.taskIDs(t, QueueOpenSRS)
			require.Len(t, ids, 1, "one task, whatever the race")
			fresh := 0
			for _, e := range results {
				require.Equal(t, ids[0], e.ID)
				if !e.Duplicate {
					fresh++
				}
			}
			require.Equal(t, 1, fresh)
		})
	})
}

// asynqEnqueueScript matches asynq's enqueue and schedule scripts: their
// first key is the task's hash.
func asynqEnqueueScript(args []string) bool {
	return len(args) >= 4 && (args[0] == "evalsha" || args[0] == "eval") && strings.Contains(args[3], "}:t:")
}

// proxied returns an Enqueuer whose Redis traffic goes through a fault
// proxy, with asynq's script already cached by the server (so the fault
// hits the real enqueue, not a NOSCRIPT round) and a connection open.
func proxied(t *testing.T, b redistest.Backend, eb *enqueueBundle) (*Enqueuer, *redistest.Proxy) {
	t.Helper()
	_, err := eb.enq.Enqueue(t.Context(), &DigiCertPayload{OrderID: "1"}, testOptions(0))
	require.NoError(t, err)
	opt, err := redis.ParseURL(b.URL)
	require.NoError(t, err)
	p := redistest.NewProxy(t, opt.Addr)
	opt.Addr = p.Addr()
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(t.Context()).Err())
	enq := NewEnqueuer(c)
	t.Cleanup(func() { _ = enq.Close() })
	return enq, p
}

// TestEnqueueConnectionDropped cuts the connection around asynq's enqueue
// script, then retries the same request through a healthy connection, as an
// upstream system would.
func TestEnqueueConnectionDropped(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		forward   bool // the script ran (only its reply was lost)
		reconnect bool // go-redis may reconnect and retry at once
		// wantFirst: "ok" the first call reports the task, "uncertain" it
		// says the task may have been enqueued.
		wantFirst string
	}{
		{"reply lost, reconnect allowed", true, true, "ok"},
		{"reply lost, Redis unreachable after", true, false, "uncertain"},
		{"dropped before the enqueue, reconnect allowed", false, true, "ok"},
		{"dropped before the enqueue, Redis unreachable after", false, false, "uncertain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := redistest.Real(t)
			eb := setupEnqueue(t, b)
			enq, proxy := proxied(t, b, eb)
			p := NewOpenSRSPayload("41", "dropped", false)
			opts := testOptions(10 * time.Minute)

			proxy.Refuse(!tc.reconnect)
			tripped := proxy.Inject(redistest.Fault{Match: asynqEnqueueScript, Forward: tc.forward})
			first, err := enq.Enqueue(t.Context(), p, opts)
			<-tripped
			proxy.Refuse(false)
			var id string
			switch tc.wantFirst {
			case "ok":
				require.NoError(t, err)
				id = first.ID
				eb.requireTask(t, QueueOpenSRS, id)
			case "uncertain":
				var ue *UncertainError
				require.ErrorAs(t, err, &ue)
				require.Contains(t, err.Error(), "may have been enqueued as "+ue.ID)
				id = ue.ID
			}

			retry, err := eb.enq.Enqueue(t.Context(), p, opts)
			if tc.forward || tc.wantFirst == "ok" {
				// The task exists: the retry is its duplicate.
				require.NoError(t, err)
				require.Equal(t, Enqueued{ID: id, Duplicate: true}, retry)
				eb.requireTask(t, QueueOpenSRS, id)
				require.Equal(t, []string{id}, eb.taskIDs(t, QueueOpenSRS), "one task, one email")
				return
			}
			// Nothing ran: within the grace the retry cannot tell either...
			var ue *UncertainError
			require.ErrorAs(t, err, &ue, "never a duplicate of a task that does not exist")
			require.Equal(t, id, ue.ID)
			require.Empty(t, eb.taskIDs(t, QueueOpenSRS))
			// ...after it, the retry enqueues: no silent no-op.
			eb.enq.now = func() time.Time { return time.Now().Add(DedupGrace + time.Second) }
			retry, err = eb.enq.Enqueue(t.Context(), p, opts)
			require.NoError(t, err)
			require.False(t, retry.Duplicate)
			eb.requireTask(t, QueueOpenSRS, retry.ID)
			require.Equal(t, []string{retry.ID}, eb.taskIDs(t, QueueOpenSRS))
		})
	}
}

// TestEnqueueWithoutScriptPermission: a Redis user that may SET but not run
// scripts sets the mark, then cannot enqueue nor release the mark. The
// retry with a full user must enqueue, not answer "duplicate".
func TestEnqueueWithoutScriptPermission(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	eb := setupEnqueue(t, b)
	limitedURL := noScriptUser(t, eb.rdb, b.URL)
	opt, err := redis.ParseURL(limitedURL)
	require.NoError(t, err)
	limited := redis.NewClient(opt)
	t.Cleanup(func() { _ = limited.Close() })
	enq := NewEnqueuer(limited)
	t.Cleanup(func() { _ = enq.Close() })

	p := NewOpenSRSPayload("51", "acl", false)
	opts := testOptions(10 * time.Minute)
	_, err = enq.Enqueue(t.Context(), p, opts)
	require.ErrorContains(t, err, "not enqueued")
	require.ErrorContains(t, err, "NOPERM")
	var ue *UncertainError
	require.False(t, errors.As(err, &ue), "Redis refused: certain")
	n, err := eb.rdb.Exists(t.Context(), markKey(t, p)).Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "the release failed too: the mark is left")

	retry, err := eb.enq.Enqueue(t.Context(), p, opts)
	require.NoError(t, err)
	require.False(t, retry.Duplicate)
	eb.requireTask(t, QueueOpenSRS, retry.ID)
}

// noScriptUser creates a Redis ACL user allowed every command but scripts
// and returns url with its credentials.
func noScriptUser(t *testing.T, admin redis.UniversalClient, url string) string {
	t.Helper()
	name := "noscript-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all", "-@scripting").Err())
	t.Cleanup(func() { _ = admin.Do(context.Background(), "ACL", "DELUSER", name).Err() })
	u, err := neturl.Parse(url)
	require.NoError(t, err)
	u.User = neturl.UserPassword(name, "pw")
	return u.String()
}

// TestEnqueueWaitsForInFlightTwin: an identical request whose mark is set
// but whose task is not there yet is waited for, briefly.
func TestEnqueueWaitsForInFlightTwin(t *testing.T) {
	t.Parallel()

	const twin = "00000000-0000-4000-8000-000000000002"
	tests := []struct {
		name    string
		markAge time.Duration
		appears bool
	}{
		{"its task appears: duplicate", 0, true},
		{"its call limit passes without a task: unknown", enqueueCallLimit - 300*time.Millisecond, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				eb := setupEnqueue(t, b)
				p := NewOpenSRSPayload("61", "twin", false)
				opts := testOptions(10 * time.Minute)
				require.NoError(t, eb.rdb.Set(t.Context(), markKey(t, p), markValue(twin, time.Now().Add(-tc.markAge)), time.Minute).Err())
				if tc.appears {
					go func() {
						time.Sleep(200 * time.Millisecond)
						task, err := NewTask(p, opts, twin)
						if err == nil {
							_, _ = asynq.NewClientFromRedisClient(eb.rdb).Enqueue(task)
						}
					}()
				}
				got, err := eb.enq.Enqueue(t.Context(), p, opts)
				if tc.appears {
					require.NoError(t, err)
					require.Equal(t, Enqueued{ID: twin, Duplicate: true}, got)
					return
				}
				var ue *UncertainError
				require.ErrorAs(t, err, &ue)
				require.Equal(t, twin, ue.ID)
				require.Empty(t, eb.taskIDs(t, QueueOpenSRS))
			})
		})
	}
}

// TestEnqueueMarkOfDeletedTask: a task that ran and was deleted inside the
// window leaves nothing in flight, so its mark is free at once; a replay
// (EnqueueRaw) takes the mark over, so the request dedupes to the replay.
func TestEnqueueMarkOfDeletedTask(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		store := outcome.NewStore(eb.rdb, time.Hour)
		opts := testOptions(10 * time.Minute)
		ran := func(id string) {
			require.NoError(t, store.Record(t.Context(), outcome.Attempt{TaskID: id, Attempt: 1, Outcome: outcome.Dead, At: time.Now()}, nil))
		}

		// Deleted: the next identical request is a new task, without waiting.
		p := NewOpenSRSPayload("71", "deleted", false)
		first, err := eb.enq.Enqueue(t.Context(), p, opts)
		require.NoError(t, err)
		ran(first.ID)
		require.NoError(t, eb.insp.DeleteTask(QueueOpenSRS, first.ID))
		start := time.Now()
		second, err := eb.enq.Enqueue(t.Context(), p, opts)
		require.NoError(t, err)
		require.False(t, second.Duplicate)
		require.Less(t, time.Since(start), enqueueCallLimit, "no wait for a task known to have run")
		eb.requireTask(t, QueueOpenSRS, second.ID)

		// Replayed: the mark follows the replay.
		q := NewOpenSRSPayload("72", "replayed", false)
		orig, err := eb.enq.Enqueue(t.Context(), q, opts)
		require.NoError(t, err)
		ran(orig.ID)
		body, err := json.Marshal(q)
		require.NoError(t, err)
		require.NoError(t, eb.insp.DeleteTask(QueueOpenSRS, orig.ID))
		replay, err := eb.enq.EnqueueRaw(t.Context(), q.Type(), body, opts)
		require.NoError(t, err)
		again, err := eb.enq.Enqueue(t.Context(), q, opts)
		require.NoError(t, err)
		require.Equal(t, Enqueued{ID: replay, Duplicate: true}, again)
		ttl, err := eb.rdb.TTL(t.Context(), markKey(t, q)).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, 9*time.Minute, "the mark keeps its expiry")

		// A replay never takes a mark whose task still exists.
		r := NewOpenSRSPayload("73", "live", false)
		live, err := eb.enq.Enqueue(t.Context(), r, opts)
		require.NoError(t, err)
		rbody, err := json.Marshal(r)
		require.NoError(t, err)
		_, err = eb.enq.EnqueueRaw(t.Context(), r.Type(), rbody, opts)
		require.NoError(t, err)
		again, err = eb.enq.Enqueue(t.Context(), r, opts)
		require.NoError(t, err)
		require.Equal(t, Enqueued{ID: live.ID, Duplicate: true}, again)
	})
}

// TestEnqueueMarkReplyLost: the reply to SET NX is lost and go-redis
// retries it on a new connection, where the mark (ours) already exists. The
// request must enqueue, not answer "duplicate" of its own task that was
// never created.
func TestEnqueueMarkReplyLost(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	eb := setupEnqueue(t, b)
	enq, proxy := proxied(t, b, eb)
	p := NewOpenSRSPayload("81", "setnx", false)
	opts := testOptions(10 * time.Minute)

	tripped := proxy.Inject(redistest.Fault{Match: redistest.Command("set"), Forward: true})
	got, err := enq.Enqueue(t.Context(), p, opts)
	<-tripped
	require.NoError(t, err)
	require.False(t, got.Duplicate)
	eb.requireTask(t, QueueOpenSRS, got.ID)

	again, err := eb.enq.Enqueue(t.Context(), p, opts)
	require.NoError(t, err)
	require.Equal(t, Enqueued{ID: got.ID, Duplicate: true}, again)
}

// replyErr is a Redis error reply as go-redis types it.
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

var _ redis.Error = replyErr("")

func TestRefusedByRedis(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"script refused by ACL", errors.New("UNKNOWN: redis eval error: NOPERM this user has no permissions to run the 'evalsha' command"), true},
		{"out of memory", errors.New("redis eval error: OOM command not allowed when used memory > 'maxmemory'."), true},
		{"connection dropped", errors.New("UNKNOWN: redis eval error: EOF"), false},
		{"connection refused", errors.New("redis eval error: dial tcp 127.0.0.1:1: connect: connection refused"), false},
		{"deadline", fmt.Errorf("redis eval error: %w", context.DeadlineExceeded), false},
		{"loading (go-redis retries it)", errors.New("redis eval error: LOADING Redis is loading the dataset in memory"), false},
		{"max clients (go-redis retries it)", errors.New("redis eval error: ERR max number of clients reached"), false},
		{"read-only replica (go-redis retries it)", errors.New("redis eval error: READONLY You can't write against a read only replica."), false},
		{"typed reply error", fmt.Errorf("sadd: %w", replyErr("NOPERM no")), true},
		{"typed reply error, retried kind", fmt.Errorf("sadd: %w", replyErr("LOADING later")), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, refusedByRedis(tc.err))
		})
	}
}

package tasks

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
)

type enqueueBundle struct {
	rdb  *redis.Client
	enq  *Enqueuer
	insp *asynq.Inspector
}

func setupEnqueue(t *testing.T, b redistest.Backend) *enqueueBundle {
	t.Helper()
	rdb := b.Client(t)
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
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
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
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
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
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		eb := setupEnqueue(t, b)
		p := NewOpenSRSPayload("88", "", false)
		e, err := eb.enq.Enqueue(t.Context(), p, testOptions(10*time.Minute))
		require.NoError(t, err)

		body, err := json.Marshal(p)
		require.NoError(t, err)
		key := outcome.DedupKey(dedupHash(p.Type(), body))
		v, err := eb.rdb.Get(t.Context(), key).Result()
		require.NoError(t, err)
		require.Equal(t, e.ID, v, "the mark holds the first task's ID")
		ttl, err := eb.rdb.TTL(t.Context(), key).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, 9*time.Minute)
		require.LessOrEqual(t, ttl, 10*time.Minute)
	})
}

func TestEnqueueRaw(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
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
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
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
		keys, err := eb.rdb.Keys(t.Context(), outcome.KeyPrefix+"*").Result()
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
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
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

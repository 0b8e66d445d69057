package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
)

// fakeResender is a providers.Resender answering with ResendFunc and
// remembering every request.
type fakeResender struct {
	ResendFunc func(ctx context.Context, n int, req providers.Request) (providers.Result, error)

	mu    sync.Mutex
	calls []providers.Request
}

func (f *fakeResender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	n := len(f.calls)
	f.mu.Unlock()
	if f.ResendFunc == nil {
		return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
	}
	return f.ResendFunc(ctx, n, req)
}

func (f *fakeResender) Calls() []providers.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]providers.Request(nil), f.calls...)
}

// handlerBundle is a handler wired to a real outcome.Store and asynq server
// on one test backend.
type handlerBundle struct {
	rdb      *redis.Client
	store    *outcome.Store
	insp     *asynq.Inspector
	enq      *Enqueuer
	resender *fakeResender
	handler  *Handler
}

func setupHandler(t *testing.T, b redistest.Backend, resend func(ctx context.Context, n int, req providers.Request) (providers.Result, error)) *handlerBundle {
	t.Helper()
	rdb := b.Client(t)
	store := outcome.NewStore(rdb, time.Hour)
	fake := &fakeResender{ResendFunc: resend}
	h := &Handler{
		Resenders: map[providers.Name]providers.Resender{
			providers.OpenSRS:  fake,
			providers.DigiCert: fake,
		},
		Recorder:        store,
		Logger:          slog.New(slog.DiscardHandler),
		ProviderTimeout: 5 * time.Second,
		InAttempt:       InAttempt{MaxRetries: 2, Backoff: time.Millisecond, MaxRateLimitWait: 100 * time.Millisecond},
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	enq := NewEnqueuer(rdb)
	t.Cleanup(func() { _ = enq.Close() })
	return &handlerBundle{rdb: rdb, store: store, insp: insp, enq: enq, resender: fake, handler: h}
}

// start runs an asynq server with the handler until the test ends.
func (hb *handlerBundle) start(t *testing.T) {
	t.Helper()
	srv := asynq.NewServerFromRedisClient(hb.rdb, asynq.Config{
		Concurrency: 2,
		Queues:      map[string]int{QueueOpenSRS: 1, QueueDigiCert: 1},
		// A constant 1s keeps retried and rate-limited tasks quick; the real
		// schedule is RetryPolicy.RetryDelay, tested on its own.
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return time.Second },
		IsFailure:                IsFailure,
		TaskCheckInterval:        100 * time.Millisecond,
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		ShutdownTimeout:          2 * time.Second,
		LogLevel:                 asynq.ErrorLevel,
	})
	require.NoError(t, srv.Start(hb.handler))
	t.Cleanup(srv.Shutdown)
}

// waitFinal polls the inspector until the task is completed or archived.
func (hb *handlerBundle) waitFinal(t *testing.T, queue, id string) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	require.Eventually(t, func() bool {
		var err error
		info, err = hb.insp.GetTaskInfo(queue, id)
		if err != nil {
			return false
		}
		return info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived
	}, 20*time.Second, 50*time.Millisecond, "task %s never reached a final state", id)
	return info
}

func (hb *handlerBundle) attempts(t *testing.T, id string) []outcome.Attempt {
	t.Helper()
	as, err := hb.store.Attempts(t.Context(), id)
	require.NoError(t, err)
	return as
}

func outcomesOf(as []outcome.Attempt) (outs []outcome.Outcome, nums []int) {
	for _, a := range as {
		outs = append(outs, a.Outcome)
		nums = append(nums, a.Attempt)
	}
	return outs, nums
}

func handlerOptions(maxRetry int) Options {
	return Options{MaxRetry: maxRetry, Timeout: 30 * time.Second, Retention: time.Hour}
}

func TestHandlerSuccess(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		payload  Payload
		queue    string
		provider providers.Name
		wantReq  providers.Request
	}{
		{"opensrs cert", NewOpenSRSPayload("1001", "T-1", false), QueueOpenSRS, providers.OpenSRS,
			providers.Request{OrderID: "1001", Action: providers.ActionResendCertEmail}},
		{"opensrs approve", NewOpenSRSPayload("1002", "", true), QueueOpenSRS, providers.OpenSRS,
			providers.Request{OrderID: "1002", Action: providers.ActionResendApproveEmail}},
		{"digicert", &DigiCertPayload{OrderID: "1003", Locale: "en", Reference: "R",
			DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
			QueueDigiCert, providers.DigiCert,
			providers.Request{OrderID: "1003", Action: providers.ActionResendCertEmail, Locale: "en",
				ApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				hb := setupHandler(t, b, func(_ context.Context, _ int, req providers.Request) (providers.Result, error) {
					return providers.Result{Provider: tc.provider, StatusCode: 200, Code: "200", Message: "Email sent"}, nil
				})
				hb.start(t)
				e, err := hb.enq.Enqueue(t.Context(), tc.payload, handlerOptions(3))
				require.NoError(t, err)

				info := hb.waitFinal(t, tc.queue, e.ID)
				require.Equal(t, asynq.TaskStateCompleted, info.State)
				require.Equal(t, 0, info.Retried)

				var res Result
				require.NoError(t, json.Unmarshal(info.Result, &res))
				require.Equal(t, string(tc.provider), res.Provider)
				require.Equal(t, tc.payload.Order(), res.OrderID)
				require.Equal(t, tc.payload.Ref(), res.Reference)
				require.Equal(t, 1, res.Attempt)
				require.Equal(t, 200, res.HTTPStatus)
				require.Equal(t, "Email sent", res.ProviderMessage)
				require.False(t, res.Duplicate)
				require.False(t, res.CompletedAt.IsZero())

				as := hb.attempts(t, e.ID)
				require.Len(t, as, 1)
				a := as[0]
				require.Equal(t, outcome.Succeeded, a.Outcome)
				require.Equal(t, e.ID, a.TaskID)
				require.Equal(t, tc.payload.Type(), a.Type)
				require.Equal(t, tc.queue, a.Queue)
				require.Equal(t, string(tc.provider), a.Provider)
				require.Equal(t, tc.payload.Order(), a.OrderID)
				require.Equal(t, tc.payload.Ref(), a.Reference)
				require.Equal(t, 1, a.Attempt)
				require.Equal(t, "success", a.Class)
				require.Equal(t, 200, a.HTTPStatus)

				require.Equal(t, []providers.Request{tc.wantReq}, hb.resender.Calls())
				_, done, err := hb.store.SucceededAt(t.Context(), e.ID)
				require.NoError(t, err)
				require.True(t, done, "idempotency mark set")
			})
		})
	}
}

func TestHandlerTransientThenSuccess(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, func(_ context.Context, n int, _ providers.Request) (providers.Result, error) {
			if n <= 2 {
				return providers.Result{}, transientErr("read tcp: connection reset by peer")
			}
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
		})
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("2001", "", false), handlerOptions(3))
		require.NoError(t, err)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateCompleted, info.State)
		require.Len(t, hb.resender.Calls(), 3, "a maybe-sent error is never retried in-attempt")

		var res Result
		require.NoError(t, json.Unmarshal(info.Result, &res))
		require.Equal(t, 3, res.Attempt)

		outs, nums := outcomesOf(hb.attempts(t, e.ID))
		require.Equal(t, []outcome.Outcome{outcome.Retrying, outcome.Retrying, outcome.Succeeded}, outs)
		require.Equal(t, []int{1, 2, 3}, nums)
		as := hb.attempts(t, e.ID)
		require.Equal(t, "transient", as[0].Class)
		require.Equal(t, "read tcp: connection reset by peer", as[0].Error)

		n, err := hb.store.CountDead(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

func TestHandlerDeadLetters(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		resend   func(ctx context.Context, n int, req providers.Request) (providers.Result, error)
		maxRetry int
		// enqueue puts the task in; nil means Enqueue an OpenSRS payload.
		enqueue func(t *testing.T, hb *handlerBundle, maxRetry int) (queue, id string, payload []byte)
		// prepare, if set, runs after enqueue and before the server starts.
		prepare     func(t *testing.T, hb *handlerBundle, id string)
		wantCalls   int
		wantRetried int
		wantClass   string
		wantLastErr string
		wantOutcome []outcome.Outcome
	}{
		{
			name: "permanent",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				return providers.Result{}, permanentErr("order 3001 not found")
			},
			maxRetry: 5, wantCalls: 1, wantRetried: 0, wantClass: "permanent",
			wantLastErr: "order 3001 not found", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name: "configuration",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				return providers.Result{}, &fakeErr{msg: "IP not allow-listed", d: providers.Detail{Class: providers.Configuration, StatusCode: 403}}
			},
			maxRetry: 5, wantCalls: 1, wantRetried: 0, wantClass: "configuration",
			wantLastErr: "IP not allow-listed", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name: "permanent error text is redacted",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				return providers.Result{}, permanentErr("approver admin@example.com is not valid for order 3002")
			},
			maxRetry: 5, wantCalls: 1, wantRetried: 0, wantClass: "permanent",
			wantLastErr: "approver a***@example.com is not valid for order 3002", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name: "retries exhausted",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				return providers.Result{}, transientErr("502 bad gateway from ops@example.net")
			},
			maxRetry: 1, wantCalls: 2, wantRetried: 1, wantClass: "retries_exhausted",
			wantLastErr: "502 bad gateway from o***@example.net", wantOutcome: []outcome.Outcome{outcome.Retrying, outcome.Dead},
		},
		{
			name: "rate limited with no budget left",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				return providers.Result{}, rateLimitedErr("429 too many requests", 10*time.Second)
			},
			maxRetry: 0, wantCalls: 1, wantRetried: 0, wantClass: "retries_exhausted",
			wantLastErr: "429 too many requests", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "invalid payload",
			maxRetry: 5,
			enqueue: func(t *testing.T, hb *handlerBundle, maxRetry int) (string, string, []byte) {
				payload := []byte(`{"order_id":"abc"}`)
				info, err := asynq.NewClientFromRedisClient(hb.rdb).EnqueueContext(t.Context(),
					asynq.NewTask(TypeOpenSRSResendCertEmail, payload), asynq.Queue(QueueOpenSRS), asynq.MaxRetry(maxRetry))
				require.NoError(t, err)
				return QueueOpenSRS, info.ID, payload
			},
			wantCalls: 0, wantRetried: 0, wantClass: "invalid_payload",
			wantLastErr: `invalid payload: order_id: must be 1-20 ASCII digits, got "abc"`, wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "invalid json payload",
			maxRetry: 5,
			enqueue: func(t *testing.T, hb *handlerBundle, maxRetry int) (string, string, []byte) {
				payload := []byte("order_id=1&reference=<x>")
				info, err := asynq.NewClientFromRedisClient(hb.rdb).EnqueueContext(t.Context(),
					asynq.NewTask(TypeDigiCertResendEmails, payload), asynq.Queue(QueueDigiCert), asynq.MaxRetry(maxRetry))
				require.NoError(t, err)
				return QueueDigiCert, info.ID, payload
			},
			wantCalls: 0, wantRetried: 0, wantClass: "invalid_payload", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "invalid payload echoing an email is redacted",
			maxRetry: 5,
			enqueue: func(t *testing.T, hb *handlerBundle, maxRetry int) (string, string, []byte) {
				payload := []byte(`{"order_id":"3004","domain_approval_emails":[{"domain":"admin@example.com","email":"admin@example.com"}]}`)
				info, err := asynq.NewClientFromRedisClient(hb.rdb).EnqueueContext(t.Context(),
					asynq.NewTask(TypeDigiCertResendEmails, payload), asynq.Queue(QueueDigiCert), asynq.MaxRetry(maxRetry))
				require.NoError(t, err)
				return QueueDigiCert, info.ID, payload
			},
			wantCalls: 0, wantRetried: 0, wantClass: "invalid_payload",
			wantLastErr: `invalid payload: domain_approval_emails[0].domain: must be a valid hostname like example.com, got "a***@example.com"`,
			wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "unconfigured provider on the last attempt",
			maxRetry: 0,
			prepare: func(_ *testing.T, hb *handlerBundle, _ string) {
				delete(hb.handler.Resenders, providers.OpenSRS)
			},
			wantCalls: 0, wantRetried: 0, wantClass: "configuration",
			wantLastErr: "provider opensrs is not configured on this worker", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "claim error on the last attempt",
			maxRetry: 1,
			prepare: func(_ *testing.T, hb *handlerBundle, _ string) {
				hb.handler.Recorder = claimFailing{hb.store}
			},
			wantCalls: 0, wantRetried: 1, wantClass: "retries_exhausted",
			wantLastErr: "outcome: claim task: READONLY You can't write against a read only replica.",
			wantOutcome: []outcome.Outcome{outcome.Retrying, outcome.Dead},
		},
		{
			name:     "claim wait runs out on the last attempt",
			maxRetry: 0,
			enqueue: func(t *testing.T, hb *handlerBundle, maxRetry int) (string, string, []byte) {
				p := NewOpenSRSPayload("3005", "", false)
				// A short task timeout: the wait ends at its deadline less recordMargin.
				e, err := hb.enq.Enqueue(t.Context(), p, Options{MaxRetry: maxRetry, Timeout: 3 * time.Second, Retention: time.Hour})
				require.NoError(t, err)
				payload, err := json.Marshal(p)
				require.NoError(t, err)
				return QueueOpenSRS, e.ID, payload
			},
			prepare: func(t *testing.T, hb *handlerBundle, id string) {
				// Another delivery holds the provider call past this attempt.
				state, _, _, err := hb.store.Claim(t.Context(), id, "zombie", time.Minute)
				require.NoError(t, err)
				require.Equal(t, outcome.Claimed, state)
			},
			wantCalls: 0, wantRetried: 0, wantClass: "in_flight",
			wantLastErr: "another delivery of this task held the provider call until this attempt's deadline",
			wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name: "provider client panics on the last attempt",
			resend: func(context.Context, int, providers.Request) (providers.Result, error) {
				panic("boom for admin@example.com")
			},
			maxRetry: 0, wantCalls: 1, wantRetried: 0, wantClass: "panic",
			wantLastErr: "panic: boom for a***@example.com", wantOutcome: []outcome.Outcome{outcome.Dead},
		},
		{
			name:     "unknown task type",
			maxRetry: 5,
			enqueue: func(t *testing.T, hb *handlerBundle, maxRetry int) (string, string, []byte) {
				payload := []byte(`{"order_id":"3003", "reference": "x"}`)
				info, err := asynq.NewClientFromRedisClient(hb.rdb).EnqueueContext(t.Context(),
					asynq.NewTask("opensrs:frobnicate", payload), asynq.Queue(QueueOpenSRS), asynq.MaxRetry(maxRetry))
				require.NoError(t, err)
				return QueueOpenSRS, info.ID, payload
			},
			wantCalls: 0, wantRetried: 0, wantClass: "invalid_payload",
			wantLastErr: `invalid payload: unknown task type "opensrs:frobnicate"`, wantOutcome: []outcome.Outcome{outcome.Dead},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				hb := setupHandler(t, b, tc.resend)
				var queue, id string
				var payload []byte
				if tc.enqueue != nil {
					queue, id, payload = tc.enqueue(t, hb, tc.maxRetry)
				} else {
					p := NewOpenSRSPayload("3000", "ticket-9", false)
					e, err := hb.enq.Enqueue(t.Context(), p, handlerOptions(tc.maxRetry))
					require.NoError(t, err)
					queue, id = QueueOpenSRS, e.ID
					payload, err = json.Marshal(p)
					require.NoError(t, err)
				}
				if tc.prepare != nil {
					tc.prepare(t, hb, id)
				}
				hb.start(t)

				info := hb.waitFinal(t, queue, id)
				require.Equal(t, asynq.TaskStateArchived, info.State)
				require.Equal(t, tc.wantRetried, info.Retried)
				require.NotContains(t, info.LastErr, "skip retry")
				if tc.wantLastErr != "" {
					require.Equal(t, tc.wantLastErr, info.LastErr)
				}
				require.Len(t, hb.resender.Calls(), tc.wantCalls)

				as := hb.attempts(t, id)
				outs, _ := outcomesOf(as)
				require.Equal(t, tc.wantOutcome, outs)
				last := as[len(as)-1]
				require.Equal(t, info.LastErr, last.Error)
				require.NotContains(t, last.ProviderMessage, "admin@")

				d, ok, err := hb.store.DeadLetter(t.Context(), id)
				require.NoError(t, err)
				require.True(t, ok, "dead letter recorded")
				require.Equal(t, id, d.ID)
				require.Equal(t, info.Type, d.Type)
				require.Equal(t, queue, d.Queue)
				require.Equal(t, queue, d.Provider)
				require.Equal(t, tc.wantClass, d.Class)
				require.Equal(t, "handler", d.Source)
				require.Equal(t, info.LastErr, d.LastError)
				require.Equal(t, tc.wantRetried, d.Retried)
				require.Equal(t, tc.maxRetry, d.MaxRetry)
				if json.Valid(payload) {
					require.JSONEq(t, string(payload), string(d.Payload), "payload kept as the same JSON value")
				} else {
					require.Equal(t, payload, []byte(d.Payload), "broken payload kept verbatim")
				}
				require.Equal(t, payload, info.Payload)
				require.False(t, d.LastFailedAt.IsZero())

				n, err := hb.store.CountDead(t.Context())
				require.NoError(t, err)
				require.Equal(t, int64(1), n)

				if tc.prepare == nil { // a test's own zombie claim is not the handler's to release
					claims, err := hb.rdb.Exists(t.Context(), rdb.InflightKey(id)).Result()
					require.NoError(t, err)
					require.Zero(t, claims, "the in-flight claim is released")
				}

				// The attempt history of a dead task does not expire.
				ttl, err := hb.rdb.TTL(t.Context(), rdb.AttemptsKey(id)).Result()
				require.NoError(t, err)
				require.Equal(t, time.Duration(-1), ttl)
			})
		})
	}
}

func TestHandlerRateLimitedDoesNotSpendBudget(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, func(_ context.Context, n int, _ providers.Request) (providers.Result, error) {
			if n == 1 {
				// Longer than MaxRateLimitWait: the task goes back to the queue.
				return providers.Result{}, rateLimitedErr("429 slow down", 10*time.Second)
			}
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
		})
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("4001", "", false), handlerOptions(1))
		require.NoError(t, err)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateCompleted, info.State)
		require.Equal(t, 0, info.Retried, "a rate limit does not spend the retry budget")
		require.Len(t, hb.resender.Calls(), 2)

		as := hb.attempts(t, e.ID)
		outs, nums := outcomesOf(as)
		require.Equal(t, []outcome.Outcome{outcome.RateLimited, outcome.Succeeded}, outs)
		require.Equal(t, []int{1, 1}, nums, "a bounce repeats the attempt number")
		require.Equal(t, int64(10_000), as[0].RetryInMS)
		require.Equal(t, "rate_limited", as[0].Class)
		require.Equal(t, 429, as[0].HTTPStatus)
	})
}

func TestHandlerShortRateLimitRetriedInAttempt(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, func(_ context.Context, n int, _ providers.Request) (providers.Result, error) {
			if n == 1 {
				return providers.Result{}, rateLimitedErr("429", 20*time.Millisecond)
			}
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
		})
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("4002", "", false), handlerOptions(1))
		require.NoError(t, err)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateCompleted, info.State)
		require.Len(t, hb.resender.Calls(), 2)
		outs, _ := outcomesOf(hb.attempts(t, e.ID))
		require.Equal(t, []outcome.Outcome{outcome.Succeeded}, outs, "one attempt, two calls")
	})
}

func TestHandlerIdempotency(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, func(context.Context, int, providers.Request) (providers.Result, error) {
			return providers.Result{}, errors.New("provider must not be called")
		})
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("5001", "dup", false), handlerOptions(3))
		require.NoError(t, err)
		// A previous delivery succeeded but its ack was lost.
		prev := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		require.NoError(t, hb.store.Record(t.Context(), outcome.Attempt{
			TaskID: e.ID, Type: TypeOpenSRSResendCertEmail, Queue: QueueOpenSRS, Provider: "opensrs",
			OrderID: "5001", Attempt: 1, Outcome: outcome.Succeeded, Class: "success", At: prev,
		}, nil))
		hb.start(t)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateCompleted, info.State)
		require.Empty(t, hb.resender.Calls(), "provider not called twice")

		var res Result
		require.NoError(t, json.Unmarshal(info.Result, &res))
		require.True(t, res.Duplicate)
		require.Equal(t, "5001", res.OrderID)
		require.Equal(t, "dup", res.Reference)
		require.Contains(t, res.ProviderMessage, "2026-03-01T12:00:00Z")

		var raw map[string]any
		require.NoError(t, json.Unmarshal(info.Result, &raw))
		require.Equal(t, true, raw["duplicate_suppressed"])

		outs, _ := outcomesOf(hb.attempts(t, e.ID))
		require.Equal(t, []outcome.Outcome{outcome.Succeeded, outcome.Succeeded}, outs)
	})
}

// TestHandlerUnconfiguredProviderRetries: a task in the queue of a provider
// this worker has no credentials for is retried while it has budget, and
// dead-lettered by the handler itself (not left to the sweep) when it has none.
func TestHandlerUnconfiguredProviderRetries(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, nil)
		delete(hb.handler.Resenders, providers.DigiCert)
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), &DigiCertPayload{OrderID: "6001"}, handlerOptions(1))
		require.NoError(t, err)

		info := hb.waitFinal(t, QueueDigiCert, e.ID)
		require.Equal(t, asynq.TaskStateArchived, info.State)
		require.Equal(t, 1, info.Retried)
		require.Contains(t, info.LastErr, "provider digicert is not configured")
		as := hb.attempts(t, e.ID)
		outs, _ := outcomesOf(as)
		require.Equal(t, []outcome.Outcome{outcome.Retrying, outcome.Dead}, outs)
		require.Equal(t, "configuration", as[0].Class)
		d, ok, err := hb.store.DeadLetter(t.Context(), e.ID)
		require.NoError(t, err)
		require.True(t, ok, "dead letter written by the handler")
		require.Equal(t, "configuration", d.Class)
		require.Equal(t, "handler", d.Source)
		require.Empty(t, hb.resender.Calls())
	})
}

// claimFailing is a Recorder whose claims fail as on a Redis replica.
type claimFailing struct{ Recorder }

func (claimFailing) Claim(context.Context, string, string, time.Duration) (outcome.ClaimState, time.Time, time.Duration, error) {
	return 0, time.Time{}, 0, errors.New("outcome: claim task: READONLY You can't write against a read only replica.")
}

// blockUntilCancelled is a provider call that never answers until its
// context ends, like a provider that hangs; it reports the calls it saw.
func blockUntilCancelled(called chan<- struct{}) func(ctx context.Context, n int, req providers.Request) (providers.Result, error) {
	return func(ctx context.Context, _ int, _ providers.Request) (providers.Result, error) {
		called <- struct{}{}
		<-ctx.Done()
		return providers.Result{}, &fakeErr{msg: "opensrs: request cancelled: " + ctx.Err().Error(),
			d: providers.Detail{Provider: providers.OpenSRS, Class: providers.Transient, Message: ctx.Err().Error()}}
	}
}

// TestHandlerShutdownInterruptsWithoutDeadLetter: asynq's Shutdown gives up
// on a hanging attempt after ShutdownTimeout, requeues the task and cancels
// the handler. The hanging provider call is cancelled, Wait returns once the
// attempt is recorded as interrupted, the claim is released and the task is
// pending with its budget untouched, even with no retry left.
func TestHandlerShutdownInterruptsWithoutDeadLetter(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		called := make(chan struct{}, 1)
		hb := setupHandler(t, b, blockUntilCancelled(called))
		srv := asynq.NewServerFromRedisClient(hb.rdb, asynq.Config{
			Concurrency: 2, Queues: map[string]int{QueueOpenSRS: 1},
			IsFailure: IsFailure, TaskCheckInterval: 100 * time.Millisecond,
			ShutdownTimeout: time.Second, LogLevel: asynq.ErrorLevel,
		})
		require.NoError(t, srv.Start(hb.handler))
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("7001", "", false), handlerOptions(0))
		require.NoError(t, err)
		select {
		case <-called:
		case <-time.After(20 * time.Second):
			t.Fatal("the provider was never called")
		}

		hb.handler.Stopping()
		srv.Shutdown()
		wctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		require.NoError(t, hb.handler.Wait(wctx), "every handler returned")

		// Everything below is already true when Wait returns: no polling.
		info, err := hb.insp.GetTaskInfo(QueueOpenSRS, e.ID)
		require.NoError(t, err)
		require.Equal(t, asynq.TaskStatePending, info.State)
		require.Equal(t, 0, info.Retried)
		as := hb.attempts(t, e.ID)
		require.Len(t, as, 1, "the interrupted attempt is recorded")
		require.Equal(t, outcome.Retrying, as[0].Outcome)
		require.Equal(t, "interrupted", as[0].Class)
		require.Contains(t, as[0].Error, "interrupted")
		n, err := hb.rdb.Exists(t.Context(), rdb.InflightKey(e.ID)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "the claim is released")
		_, dead, err := hb.store.DeadLetter(t.Context(), e.ID)
		require.NoError(t, err)
		require.False(t, dead)
	})
}

// TestHandlerWaitBounded: Wait gives up when its context ends while a
// handler is still running, and says how many.
func TestHandlerWaitBounded(t *testing.T) {
	t.Parallel()
	h := &Handler{}
	require.NoError(t, h.Wait(t.Context()), "nothing running")
	h.enter()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	err := h.Wait(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "1 task handler(s) still running")
	h.leave()
	require.NoError(t, h.Wait(t.Context()))
}

// TestHandlerCancelledOnLastAttemptIsDead: a cancellation that is not a
// shutdown (here the dashboard's cancel) is a failure to asynq, which
// archives a task with no retry left; the handler writes its dead letter.
func TestHandlerCancelledOnLastAttemptIsDead(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		called := make(chan struct{}, 1)
		hb := setupHandler(t, b, blockUntilCancelled(called))
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("7002", "", false), handlerOptions(0))
		require.NoError(t, err)
		select {
		case <-called:
		case <-time.After(20 * time.Second):
			t.Fatal("the provider was never called")
		}
		require.Eventually(t, func() bool { return hb.insp.CancelProcessing(e.ID) == nil }, 10*time.Second, 100*time.Millisecond)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateArchived, info.State)
		var d outcome.DeadLetter
		require.Eventually(t, func() bool {
			var ok bool
			d, ok, err = hb.store.DeadLetter(t.Context(), e.ID)
			return err == nil && ok
		}, 10*time.Second, 20*time.Millisecond, "dead letter written by the handler")
		require.Equal(t, "interrupted", d.Class)
		require.Equal(t, "handler", d.Source)
		as := hb.attempts(t, e.ID)
		require.Len(t, as, 1)
		require.Equal(t, outcome.Dead, as[0].Outcome)
	})
}

// TestHandlerConcurrentDelivery: when asynq delivers a task whose previous
// delivery is still calling the provider (lease expiry, timeout), the new
// delivery does not call the provider beside it. It comes back once the
// claim ends, without spending the retry budget; on its last attempt it
// waits for the claim instead of bouncing into the archive.
func TestHandlerConcurrentDelivery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		maxRetry int
		claimTTL time.Duration
	}{
		{"bounces while budget is left", 3, 1500 * time.Millisecond},
		{"waits on the last attempt", 0, 1500 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				hb := setupHandler(t, b, nil)
				e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("6001", "", false), handlerOptions(tc.maxRetry))
				require.NoError(t, err)
				// The zombie delivery holds the claim.
				state, _, _, err := hb.store.Claim(t.Context(), e.ID, "zombie", tc.claimTTL)
				require.NoError(t, err)
				require.Equal(t, outcome.Claimed, state)
				claimedAt := time.Now()
				hb.start(t)

				if b.Mini != nil { // miniredis expires keys only when told
					go func() {
						time.Sleep(tc.claimTTL)
						b.Mini.FastForward(tc.claimTTL)
					}()
				}
				info := hb.waitFinal(t, QueueOpenSRS, e.ID)
				require.Equal(t, asynq.TaskStateCompleted, info.State)
				require.Equal(t, 0, info.Retried, "waiting for another delivery spends no budget")
				calls := hb.resender.Calls()
				require.Len(t, calls, 1, "exactly one provider call")
				require.GreaterOrEqual(t, time.Since(claimedAt), tc.claimTTL, "not called while the other delivery held the claim")

				outs, _ := outcomesOf(hb.attempts(t, e.ID))
				require.Equal(t, outcome.Succeeded, outs[len(outs)-1])
				if tc.maxRetry > 0 {
					require.Equal(t, outcome.Retrying, outs[0], "the bounce is recorded")
				}
			})
		})
	}
}

// recordFailing is a Recorder whose first records fail, as while Redis
// restarts.
type recordFailing struct {
	Recorder
	mu    sync.Mutex
	fails int
}

func (r *recordFailing) Record(ctx context.Context, a outcome.Attempt, dead *outcome.DeadLetter) error {
	r.mu.Lock()
	fail := r.fails > 0
	if fail {
		r.fails--
	}
	r.mu.Unlock()
	if fail {
		return errors.New("outcome: record attempt: dial tcp: connection refused")
	}
	return r.Recorder.Record(ctx, a, dead)
}

// TestHandlerSuccessRecordRetriedWhileRedisIsAway: the provider accepted the
// request but the first two records of the success failed (Redis
// restarting): the handler tries again until the success mark is written,
// so a redelivery of the task would not send the email again. It used to
// give up after one failed record and leave no mark.
func TestHandlerSuccessRecordRetriedWhileRedisIsAway(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		hb := setupHandler(t, b, func(context.Context, int, providers.Request) (providers.Result, error) {
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "Email sent"}, nil
		})
		hb.handler.Recorder = &recordFailing{Recorder: hb.store, fails: 2}
		hb.start(t)
		e, err := hb.enq.Enqueue(t.Context(), NewOpenSRSPayload("7001", "", false), handlerOptions(3))
		require.NoError(t, err)

		info := hb.waitFinal(t, QueueOpenSRS, e.ID)
		require.Equal(t, asynq.TaskStateCompleted, info.State)
		_, done, err := hb.store.SucceededAt(t.Context(), e.ID)
		require.NoError(t, err)
		require.True(t, done, "the success mark is written once Redis takes it")
		outs, _ := outcomesOf(hb.attempts(t, e.ID))
		require.Equal(t, []outcome.Outcome{outcome.Succeeded}, outs)
		require.Len(t, hb.resender.Calls(), 1)
	})
}

package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
)

// Enqueue defaults, shared by the enqueue CLI and dlq replay.
const (
	DefaultMaxRetry    = 10
	DefaultTimeout     = 60 * time.Second
	DefaultDedupWindow = 10 * time.Minute
)

// Options are the per-task settings an enqueue request may carry.
type Options struct {
	MaxRetry int
	Timeout  time.Duration
	Delay    time.Duration
	// Retention keeps a completed task, with its result, readable for
	// `enqueue status` (0 means outcome.DefaultRetention).
	Retention time.Duration
	// DedupWindow: an identical request inside it returns the first task.
	// 0 turns deduplication off.
	DedupWindow time.Duration
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{MaxRetry: DefaultMaxRetry, Timeout: DefaultTimeout, Retention: outcome.DefaultRetention, DedupWindow: DefaultDedupWindow}
}

// Validate checks the options, naming the flag-level field at fault.
func (o Options) Validate() error {
	switch {
	case o.MaxRetry < 0:
		return fieldErr("max-retry", "must be 0 or more")
	case o.Timeout < time.Second:
		return fieldErr("timeout", "must be at least 1s (asynq stores whole seconds)")
	case o.Delay < 0:
		return fieldErr("delay", "must not be negative")
	case o.DedupWindow < 0:
		return fieldErr("dedup-window", "must not be negative")
	case o.DedupWindow > 0 && o.DedupWindow < time.Second:
		return fieldErr("dedup-window", "must be 0 (off) or at least 1s")
	case o.Retention < 0:
		return fieldErr("retention", "must not be negative")
	}
	return nil
}

// Enqueued is the answer to one enqueue request.
type Enqueued struct {
	ID string
	// Duplicate is set when an identical request inside the dedup window
	// already created task ID; nothing new was enqueued.
	Duplicate bool
}

// Enqueuer puts validated tasks into Redis, deduplicating identical
// requests. It is safe for concurrent use.
type Enqueuer struct {
	client *asynq.Client
	rdb    redis.UniversalClient
}

// NewEnqueuer returns an Enqueuer sharing one go-redis client with asynq.
func NewEnqueuer(rdb redis.UniversalClient) *Enqueuer {
	return &Enqueuer{client: asynq.NewClientFromRedisClient(rdb), rdb: rdb}
}

// NewTask validates p and builds its asynq task with opts applied.
func NewTask(p Payload, o Options, id string) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return asynq.NewTask(p.Type(), b, taskOptions(p, o, id)...), nil
}

func taskOptions(p Payload, o Options, id string) []asynq.Option {
	retention := o.Retention
	if retention == 0 {
		retention = outcome.DefaultRetention
	}
	opts := []asynq.Option{
		asynq.Queue(string(p.Provider())),
		asynq.MaxRetry(o.MaxRetry),
		asynq.Timeout(o.Timeout),
		asynq.Retention(retention),
	}
	if id != "" {
		opts = append(opts, asynq.TaskID(id))
	}
	if o.Delay > 0 {
		opts = append(opts, asynq.ProcessIn(o.Delay))
	}
	return opts
}

// dedupHash identifies a request: same type and same payload bytes.
func dedupHash(taskType string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(taskType))
	h.Write([]byte{0})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil))
}

// releaseScript deletes the dedup mark only if it still names our task, so a
// failed enqueue never removes another request's mark.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// Enqueue validates p and enqueues it unless an identical request was
// enqueued within the dedup window.
//
// Deduplication does not use asynq's Unique or TaskID: both outlive the
// window (a Unique lock survives archiving, a TaskID conflicts with retained
// and archived tasks). A project-owned SET NX mark that expires with the
// window, holding the first task's ID, next to a fresh random task ID,
// dedupes exactly the window and nothing after it.
func (e *Enqueuer) Enqueue(ctx context.Context, p Payload, o Options) (Enqueued, error) {
	id := uuid.NewString()
	task, err := NewTask(p, o, id)
	if err != nil {
		return Enqueued{}, err
	}
	var key string
	if o.DedupWindow > 0 {
		key = outcome.DedupKey(dedupHash(task.Type(), task.Payload()))
		for range 3 { // the mark may expire between SET NX and GET
			ok, err := e.rdb.SetNX(ctx, key, id, o.DedupWindow).Result()
			if err != nil {
				return Enqueued{}, fmt.Errorf("redis: %w", err)
			}
			if ok {
				break
			}
			first, err := e.rdb.Get(ctx, key).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return Enqueued{}, fmt.Errorf("redis: %w", err)
			}
			return Enqueued{ID: first, Duplicate: true}, nil
		}
	}
	if _, err := e.client.EnqueueContext(ctx, task); err != nil {
		if key != "" {
			_ = releaseScript.Run(context.WithoutCancel(ctx), e.rdb, []string{key}, id).Err()
		}
		return Enqueued{}, fmt.Errorf("enqueue: %w", err)
	}
	return Enqueued{ID: id}, nil
}

// EnqueueRaw enqueues an already-encoded task of a known type with a fresh
// ID and budget, bypassing deduplication: it is how dead letters are
// replayed, and the payload is validated again by the handler.
func (e *Enqueuer) EnqueueRaw(ctx context.Context, taskType string, payload []byte, o Options) (string, error) {
	id := uuid.NewString()
	if err := e.EnqueueRawID(ctx, id, taskType, payload, o); err != nil {
		return "", err
	}
	return id, nil
}

// EnqueueRawID is EnqueueRaw with the caller's task ID. An ID asynq still
// holds (any state, completed tasks during their retention) is refused with
// an error wrapping asynq.ErrTaskIDConflict: dlq replay derives the ID from
// the dead letter's so that no replay of it can be enqueued twice.
func (e *Enqueuer) EnqueueRawID(ctx context.Context, id, taskType string, payload []byte, o Options) error {
	p, err := Decode(taskType, payload)
	if err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	// Keep the exact bytes: they are what upstream sent.
	task := asynq.NewTask(taskType, payload, taskOptions(p, o, id)...)
	if _, err := e.client.EnqueueContext(ctx, task); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	return nil
}

// Close releases the Enqueuer. The shared Redis client stays open: its
// owner closes it (asynq's Close only reports that it is shared).
func (e *Enqueuer) Close() error {
	_ = e.client.Close()
	return nil
}

// Package taskstatus answers "what became of this task?", the use case behind
// `enqueue status`: it merges what asynq still holds about a task (state,
// retries, result), certmail's attempt list and, once asynq has trimmed or
// deleted an archived task, the dead-letter record that outlives it. The
// command only parses its flags and prints a Status.
package taskstatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/tasks"
)

// Status is one task as `enqueue status` shows it; its JSON encoding is the
// `enqueue status --json` contract (README). Strings are as stored: callers
// mask email addresses on output.
type Status struct {
	ID            string            `json:"id"`
	Type          string            `json:"type"`
	Queue         string            `json:"queue"`
	State         string            `json:"state"`
	Retried       int               `json:"retried"`
	MaxRetry      int               `json:"max_retry"`
	LastError     string            `json:"last_error"`
	LastFailedAt  *time.Time        `json:"last_failed_at,omitempty"`
	NextProcessAt *time.Time        `json:"next_process_at,omitempty"`
	CompletedAt   *time.Time        `json:"completed_at,omitempty"`
	Timeout       string            `json:"timeout,omitempty"`
	Payload       outcome.Payload   `json:"payload"`
	Result        json.RawMessage   `json:"result,omitempty"`
	Attempts      []outcome.Attempt `json:"attempts"`
	Dead          bool              `json:"dead_lettered"`
}

// ErrNotFound is returned (wrapped, naming the task and the queues) when
// neither asynq nor the dead-letter records know the task.
var ErrNotFound = errors.New("task not found")

type notFoundError struct{ id string }

func (e notFoundError) Error() string {
	return fmt.Sprintf("task %s not found in queues %v", e.id, tasks.Queues)
}
func (notFoundError) Unwrap() error { return ErrNotFound }

// Get returns the status of task id. asynq's view wins while it holds the
// task; a dead-letter record stands in for an archived task asynq no longer
// has, shown in state "archived".
func Get(ctx context.Context, rdb redis.UniversalClient, id string) (Status, error) {
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	var info *asynq.TaskInfo
	for _, q := range tasks.Queues {
		ti, err := insp.GetTaskInfo(q, id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		if err != nil {
			return Status{}, fmt.Errorf("read task: %w", err)
		}
		info = ti
		break
	}
	store := outcome.NewStore(rdb, 0)
	attempts, err := store.Attempts(ctx, id)
	if err != nil {
		return Status{}, err
	}
	dl, dead, err := store.DeadLetter(ctx, id)
	if err != nil {
		return Status{}, err
	}
	var s Status
	switch {
	case info != nil:
		s = Status{ID: info.ID, Type: info.Type, Queue: info.Queue, State: info.State.String(),
			Retried: info.Retried, MaxRetry: info.MaxRetry, LastError: info.LastErr,
			Payload: outcome.Payload(info.Payload), Timeout: info.Timeout.String()}
		s.LastFailedAt = timePtr(info.LastFailedAt)
		s.NextProcessAt = timePtr(info.NextProcessAt)
		s.CompletedAt = timePtr(info.CompletedAt)
		if len(info.Result) > 0 && json.Valid(info.Result) {
			s.Result = info.Result
		}
	case dead:
		// asynq trimmed or deleted the archived task; our record remains.
		s = Status{ID: dl.ID, Type: dl.Type, Queue: dl.Queue, State: "archived", Retried: dl.Retried,
			MaxRetry: dl.MaxRetry, LastError: dl.LastError, LastFailedAt: timePtr(dl.LastFailedAt), Payload: dl.Payload}
	default:
		return Status{}, notFoundError{id}
	}
	if attempts == nil {
		attempts = []outcome.Attempt{} // the contract's array is never null
	}
	s.Dead = dead
	s.Attempts = attempts
	return s, nil
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

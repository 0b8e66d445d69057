package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hibiken/asynq"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/tasks"
)

// statusJSON is the `enqueue status --json` contract.
type statusJSON struct {
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

func runStatus(ctx context.Context, args []string, stdout, _ io.Writer, getenv env) error {
	var (
		c      common
		asJSON bool
	)
	fs := newFlagSet("enqueue status", "Usage: enqueue status TASK_ID [--json]\n\nFlags:\n")
	c.register(fs, getenv)
	fs.BoolVar(&asJSON, "json", false, "print one JSON object")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("TASK_ID: exactly one task ID is required")
	}
	id := pos[0]
	rdb, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.Close()

	var info *asynq.TaskInfo
	for _, q := range tasks.Queues {
		ti, err := insp.GetTaskInfo(q, id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read task: %w", err)
		}
		info = ti
		break
	}
	store := outcome.NewStore(rdb, 0)
	attempts, err := store.Attempts(ctx, id)
	if err != nil {
		return err
	}
	dl, dead, err := store.DeadLetter(ctx, id)
	if err != nil {
		return err
	}
	var s statusJSON
	switch {
	case info != nil:
		s = statusJSON{ID: info.ID, Type: info.Type, Queue: info.Queue, State: info.State.String(),
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
		s = statusJSON{ID: dl.ID, Type: dl.Type, Queue: dl.Queue, State: "archived", Retried: dl.Retried,
			MaxRetry: dl.MaxRetry, LastError: dl.LastError, LastFailedAt: timePtr(dl.LastFailedAt), Payload: dl.Payload}
	default:
		return fmt.Errorf("task %s not found in queues %v", id, tasks.Queues)
	}
	s.Dead = dead
	s.Attempts = attempts
	if asJSON {
		return writeStatusJSON(stdout, s)
	}
	return writeStatus(stdout, s)
}

// writeStatusJSON prints s with every string masked (redact.JSON): payload,
// result, reference, last error and attempt fields alike, however their
// addresses are spelled or escaped in Redis.
func writeStatusJSON(w io.Writer, s statusJSON) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, redact.JSON(b), "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// writeStatus prints s for humans; every line goes through redact.Writer,
// and the payload and result are masked as JSON first (escaped addresses).
func writeStatus(stdout io.Writer, s statusJSON) error {
	w := redact.NewWriter(stdout)
	fmt.Fprintf(w, "id:         %s\ntype:       %s\nqueue:      %s\nstate:      %s\nretried:    %d/%d\n", s.ID, s.Type, s.Queue, s.State, s.Retried, s.MaxRetry)
	if s.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", s.LastError)
	}
	if s.Result != nil {
		fmt.Fprintf(w, "result:     %s\n", redact.JSON(s.Result))
	}
	fmt.Fprintf(w, "payload:    %s\n", redact.JSON(s.Payload))
	fmt.Fprintf(w, "attempts:   %d\n", len(s.Attempts))
	for _, a := range s.Attempts {
		line := fmt.Sprintf("  #%d %s %-12s %6.0fms", a.Attempt, a.At.UTC().Format(time.RFC3339), a.Outcome, a.DurationMS)
		if a.Error != "" {
			line += "  " + a.Error
		} else if a.ProviderMessage != "" {
			line += "  " + a.ProviderMessage
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

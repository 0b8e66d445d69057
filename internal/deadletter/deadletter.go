// Package deadletter lists, shows, replays and deletes certmail's dead
// letters: resend tasks that failed for good. It backs cmd/dlq and the
// worker's periodic reconcile.
//
// Two places know about a dead task. asynq's archive holds the task itself,
// but trims silently beyond 10,000 tasks or 90 days per queue, and its
// recoverer archives tasks of crashed workers without calling any handler.
// internal/outcome holds the durable dead-letter record the handler writes
// as the task dies. The record is the source of truth here: listings read
// the records, never the archive, so they return every dead letter however
// many asynq has trimmed. Reconcile closes the crash gap by recording every
// archived task that has no record yet; run it before reading (cmd/dlq does)
// and periodically (the worker does).
//
// Replay gives a dead letter a fresh retry budget, which asynq's RunTask
// does not (it keeps Retried): the archived task is deleted, a new task with
// a new ID is enqueued from the stored payload with the same type and
// max_retry, and the record is removed. Replay and Delete refuse a dead
// letter whose asynq task is no longer archived (someone pressed Run in the
// dashboard and it is live again).
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/tasks"
)

// Errors callers branch on (errors.Is). Per-item errors wrap them with the
// task ID.
var (
	// ErrNotFound: no dead-letter record has this ID.
	ErrNotFound = errors.New("no such dead letter")
	// ErrNotArchived: the dead letter's asynq task exists in a state other
	// than archived (run again from the dashboard, say); it is live, so it is
	// neither replayed nor deleted.
	ErrNotArchived = errors.New("asynq task is not archived")
	// ErrInvalidPayload: the stored payload no longer validates, so replaying
	// it would only die again; the record is kept.
	ErrInvalidPayload = errors.New("payload does not validate")
	// ErrFilter: an explicitly named dead letter exists but does not match
	// the other filters.
	ErrFilter = errors.New("does not match the filters")
)

// workers bounds the concurrent Redis round trips of Replay and Delete.
const workers = 16

// Service reads and changes dead letters. It is safe for concurrent use.
type Service struct {
	store *outcome.Store
	insp  *asynq.Inspector
	enq   *tasks.Enqueuer
	now   func() time.Time
}

// New returns a Service over rdb and store. It builds its own asynq
// Inspector and tasks.Enqueuer on rdb; Close closes those, not rdb.
func New(rdb redis.UniversalClient, store *outcome.Store) *Service {
	return &Service{
		store: store,
		insp:  asynq.NewInspectorFromRedisClient(rdb),
		enq:   tasks.NewEnqueuer(rdb),
		now:   time.Now,
	}
}

// Close releases the Inspector and the Enqueuer, not the Redis client. Both
// were built on the shared client, which asynq never closes: their Close only
// reports that, so there is nothing left that can fail.
func (s *Service) Close() error {
	_ = s.insp.Close()
	_ = s.enq.Close()
	return nil
}

// Filter selects dead letters. Zero fields select everything.
type Filter struct {
	// Provider keeps dead letters of one provider ("opensrs", "digicert").
	Provider string
	// Since keeps dead letters whose last failure is at most this old.
	Since time.Duration
	// ErrorContains keeps dead letters whose last error contains it,
	// ignoring case.
	ErrorContains string
	// IDs restricts the selection to these dead letters; each must exist
	// (ErrNotFound) and match the other fields (ErrFilter).
	IDs []string
}

// Validate reports a filter field that cannot match anything sensible.
func (f Filter) Validate() error {
	switch {
	case f.Provider != "" && f.Provider != string(providers.OpenSRS) && f.Provider != string(providers.DigiCert):
		return fmt.Errorf("provider: must be %s or %s, got %q", providers.OpenSRS, providers.DigiCert, f.Provider)
	case f.Since < 0:
		return errors.New("since: must not be negative")
	}
	return nil
}

func (f Filter) match(d outcome.DeadLetter, now time.Time) bool {
	if f.Provider != "" && providerOf(d) != f.Provider {
		return false
	}
	if f.Since > 0 && d.LastFailedAt.Before(now.Add(-f.Since)) {
		return false
	}
	if f.ErrorContains != "" && !strings.Contains(strings.ToLower(d.LastError), strings.ToLower(f.ErrorContains)) {
		return false
	}
	return true
}

func providerOf(d outcome.DeadLetter) string {
	if d.Provider != "" {
		return d.Provider
	}
	return d.Queue
}

// selection is the outcome of applying a Filter: the matching records, and
// one error per explicitly named ID that could not be selected.
type selection struct {
	matched []outcome.DeadLetter
	missing []idError
}

type idError struct {
	id  string
	err error
}

func (s *Service) selectDead(ctx context.Context, f Filter) (selection, error) {
	var sel selection
	if err := f.Validate(); err != nil {
		return sel, fmt.Errorf("deadletter: %w", err)
	}
	now := s.now()
	if len(f.IDs) == 0 {
		all, err := s.store.DeadLetters(ctx)
		if err != nil {
			return sel, err
		}
		sel.matched = make([]outcome.DeadLetter, 0, len(all))
		for _, d := range all {
			if f.match(d, now) {
				sel.matched = append(sel.matched, d)
			}
		}
		return sel, nil
	}
	sel.matched = make([]outcome.DeadLetter, 0, len(f.IDs))
	seen := make(map[string]bool, len(f.IDs))
	for _, id := range f.IDs {
		if seen[id] {
			continue
		}
		seen[id] = true
		d, ok, err := s.store.DeadLetter(ctx, id)
		switch {
		case err != nil:
			return sel, err
		case !ok:
			sel.missing = append(sel.missing, idError{id, ErrNotFound})
		case !f.match(d, now):
			sel.missing = append(sel.missing, idError{id, ErrFilter})
		default:
			sel.matched = append(sel.matched, d)
		}
	}
	return sel, nil
}

func (e idError) error() error { return fmt.Errorf("%s: %w", e.id, e.err) }

// List returns every dead letter matching f, oldest death first. It never
// caps or pages, and returns an empty (non-nil) slice when nothing matches.
// Named IDs that do not exist or do not match are reported in the error
// (errors.Is ErrNotFound or ErrFilter) next to the ones that were found.
func (s *Service) List(ctx context.Context, f Filter) ([]outcome.DeadLetter, error) {
	sel, err := s.selectDead(ctx, f)
	if err != nil {
		return []outcome.DeadLetter{}, err
	}
	errs := make([]error, 0, len(sel.missing))
	for _, m := range sel.missing {
		errs = append(errs, m.error())
	}
	return sel.matched, errors.Join(errs...)
}

// Detail is one dead letter with its whole attempt history.
type Detail struct {
	outcome.DeadLetter
	// Attempts are the recorded handler runs, oldest first (none for a task
	// that died without reaching the handler).
	Attempts []outcome.Attempt
	// State is the asynq state of the task ("archived" normally), or "" when
	// asynq no longer holds the task (trimmed from the archive, or deleted).
	State string
}

// Show returns one dead letter with its attempts and asynq state. An unknown
// ID is ErrNotFound.
func (s *Service) Show(ctx context.Context, id string) (Detail, error) {
	d, ok, err := s.store.DeadLetter(ctx, id)
	if err != nil {
		return Detail{}, err
	}
	if !ok {
		return Detail{}, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	attempts, err := s.store.Attempts(ctx, id)
	if err != nil {
		return Detail{}, err
	}
	info, err := s.taskInfo(ctx, d)
	if err != nil {
		return Detail{}, err
	}
	det := Detail{DeadLetter: d, Attempts: attempts}
	if info != nil {
		det.State = info.State.String()
	}
	return det, nil
}

// taskInfo returns the asynq task of a dead letter, or nil when asynq no
// longer holds it.
func (s *Service) taskInfo(ctx context.Context, d outcome.DeadLetter) (*asynq.TaskInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	info, err := s.insp.GetTaskInfo(d.Queue, d.ID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read asynq task: %w", err)
	}
	return info, nil
}

// deleteTask deletes the dead letter's asynq task; a task already gone is
// not an error.
func (s *Service) deleteTask(d outcome.DeadLetter) error {
	err := s.insp.DeleteTask(d.Queue, d.ID)
	if err == nil || errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil
	}
	return fmt.Errorf("delete archived task: %w", err)
}

// archivedOrGone returns the task's asynq info (nil when gone), refusing a
// task that is live again.
func (s *Service) archivedOrGone(ctx context.Context, d outcome.DeadLetter) (*asynq.TaskInfo, error) {
	info, err := s.taskInfo(ctx, d)
	if err != nil {
		return nil, err
	}
	if info != nil && info.State != asynq.TaskStateArchived {
		return nil, fmt.Errorf("%w: it is %s (run again from the dashboard?)", ErrNotArchived, info.State)
	}
	return info, nil
}

// Replayed is the result of replaying one dead letter.
type Replayed struct {
	OldID string
	// NewID is the ID of the new task; "" on a dry run or when Err is set
	// before anything was enqueued.
	NewID string
	// Err says why this dead letter was not (fully) replayed. It wraps
	// ErrNotFound, ErrFilter, ErrNotArchived or ErrInvalidPayload, or a Redis
	// failure.
	Err error
}

// Replay re-enqueues every dead letter matching f with a fresh retry budget,
// in the order of List, and reports each one. Per-item failures are in the
// results and do not stop the others; the error is for failures that
// prevent selecting anything at all. With dryRun nothing is changed and
// every NewID is "".
//
// A replay deletes the archived task first, then enqueues the new task with
// the same type, payload bytes and max_retry (timeout from the archived
// task, tasks.DefaultTimeout when asynq no longer holds it; no dedup), then
// deletes the record. Deleting first means a crash part way leaves the
// record to replay again, never two live copies of the resend.
func (s *Service) Replay(ctx context.Context, f Filter, dryRun bool) ([]Replayed, error) {
	sel, err := s.selectDead(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]Replayed, len(sel.matched), len(sel.matched)+len(sel.missing))
	parallel(len(sel.matched), func(i int) {
		out[i] = s.replayOne(ctx, sel.matched[i], dryRun)
	})
	for _, m := range sel.missing {
		out = append(out, Replayed{OldID: m.id, Err: m.error()})
	}
	return out, nil
}

func (s *Service) replayOne(ctx context.Context, d outcome.DeadLetter, dryRun bool) Replayed {
	r := Replayed{OldID: d.ID}
	fail := func(err error) Replayed {
		r.Err = fmt.Errorf("%s: %w", d.ID, err)
		return r
	}
	info, err := s.archivedOrGone(ctx, d)
	if err != nil {
		return fail(err)
	}
	if _, err := tasks.Decode(d.Type, d.Payload); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrInvalidPayload, err))
	}
	o := tasks.DefaultOptions()
	o.DedupWindow = 0 // EnqueueRaw never dedups; say so anyway
	o.MaxRetry = max(d.MaxRetry, 0)
	if info != nil && info.Timeout >= time.Second {
		o.Timeout = info.Timeout
	}
	if err := o.Validate(); err != nil {
		return fail(err)
	}
	if dryRun {
		return r
	}
	if err := s.deleteTask(d); err != nil {
		return fail(err)
	}
	id, err := s.enq.EnqueueRaw(ctx, d.Type, d.Payload, o)
	if err != nil {
		return fail(fmt.Errorf("enqueue (the dead-letter record is kept; replay it again): %w", err))
	}
	r.NewID = id
	if err := s.store.DeleteDead(context.WithoutCancel(ctx), d.ID); err != nil {
		return fail(fmt.Errorf("replayed as %s but the record was not deleted (do not replay it again): %w", id, err))
	}
	return r
}

// Delete removes every dead letter matching f, record and archived asynq
// task, and returns the IDs it deleted in List order. Dead letters it could
// not delete (unknown ID, task live again, Redis failure) are reported in
// the joined error; the others are deleted regardless.
func (s *Service) Delete(ctx context.Context, f Filter) ([]string, error) {
	sel, err := s.selectDead(ctx, f)
	if err != nil {
		return []string{}, err
	}
	errs := make([]error, len(sel.matched))
	parallel(len(sel.matched), func(i int) {
		d := sel.matched[i]
		if _, err := s.archivedOrGone(ctx, d); err != nil {
			errs[i] = fmt.Errorf("%s: %w", d.ID, err)
			return
		}
		if err := s.deleteTask(d); err != nil {
			errs[i] = fmt.Errorf("%s: %w", d.ID, err)
		}
	})
	deleted := make([]string, 0, len(sel.matched))
	for i, d := range sel.matched {
		if errs[i] == nil {
			deleted = append(deleted, d.ID)
		}
	}
	if err := s.store.DeleteDead(context.WithoutCancel(ctx), deleted...); err != nil {
		return []string{}, errors.Join(append(errs, err)...)
	}
	for _, m := range sel.missing {
		errs = append(errs, m.error())
	}
	return deleted, errors.Join(errs...) // Join skips the nils
}

// parallel calls fn(0..n-1) on at most workers goroutines.
func parallel(n int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

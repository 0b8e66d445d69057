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
// does not (it keeps Retried): the archived task is deleted, a new task is
// enqueued from the stored payload with the same type and max_retry, and
// the record is removed. Replay and Delete refuse a dead letter whose asynq
// task is no longer archived (someone pressed Run in the dashboard and it is
// live again).
//
// # Exactly once
//
// Several operators, and every worker's sweep, act on the same dead letters
// at once. Each dead letter is replayed or deleted exactly once, and never
// comes back afterwards, by these rules:
//
//  1. Claim. Before changing anything, one Redis script (outcome.ClaimDead)
//     checks that the record still exists and that nobody else holds a
//     claim on it, and sets a claim with a lease (ClaimLease). Of any number
//     of callers, one wins; the others skip the letter and say who has it
//     (ErrSkipped). The winner gets the record as it is now, not as it was
//     when it was selected.
//
//  2. Deterministic successor. The task a replay enqueues has the ID
//     ReplayID(old ID), the same for every replay of that letter. asynq
//     refuses a second task with an ID it still holds
//     (asynq.ErrTaskIDConflict), and the claim also reports whether that
//     task left any trace after asynq forgot it (attempts, success mark,
//     its own dead letter or tombstone), read right after the claim is won:
//     only a claim holder enqueues it, so an earlier holder's successor is
//     there by then. So at most one successor is ever enqueued, whoever
//     enqueues it.
//
//  3. Order: claim → delete the archived task → enqueue the successor →
//     finish. Finish (outcome.FinishDead, one script, only for the claim's
//     holder) deletes the record and writes the tombstone rdb.TombKey
//     ("replayed" or "deleted", outcome.TombstoneTTL), then removes the
//     index entry (another cluster slot: a command of its own; an entry
//     left behind by a crash is skipped by listings and dropped once the
//     tombstone is seen, and claims are taken on the record, never on the
//     index).
//     Only the caller whose finish succeeds reports the replay, so exactly
//     one "OLD NEW" line is printed per letter across all processes.
//
//  4. Crashes. A caller that dies after claiming leaves the record in
//     place; its claim lapses after the lease and the next replay takes the
//     letter as usual: nothing is lost. If it died after enqueueing, the
//     next replay finds the successor (rule 2) and only finishes: nothing is
//     sent twice. A caller that refuses a letter or fails before the
//     successor exists releases its claim at once.
//
//  5. Sweep. Reconcile adds a record (outcome.AddDead) only if the task is
//     still in asynq's archive and then, in one script, if there is no
//     record, no tombstone and no success mark. A replayed or deleted
//     letter has left the archive before its record goes, and is
//     tombstoned when it goes, so a sweep that listed the archive before
//     the replay cannot bring it back; a task run again from the dashboard
//     and succeeded meanwhile has its success mark. The sweep also indexes
//     records whose index entry was never written (a stop between a
//     record's script and its index entry).
//
//  6. Repeats. go-redis sends a command again when its reply timed out, so
//     any step may run twice. Each is written to give the same answer the
//     second time: a claim or renewal by the same caller holds, a repeated
//     finish answers as the first did, a repeated enqueue hits the TaskID
//     conflict, a repeated delete of the archived task finds it gone.
//
// Delete follows the same claim and finish; a delete that wins a letter
// whose successor exists (a replay died before finishing) finishes it as
// replayed instead of deleting it: a letter is replayed or deleted, never
// both.
//
// What remains: a caller stalled (not crashed) for a whole lease between
// renewing its claim and enqueueing while a delete takes the letter over
// would enqueue after the delete; and a successor forgotten entirely
// (completed, then its retention and attempt history expired, 7 days by
// default) before an interrupted replay is resumed would be sent again.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outcome"
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
	// ErrSkipped: another operator replayed or deleted the dead letter, or
	// is doing so now; this call left it alone. It is not a failure: the
	// letter was handled, once, by someone.
	ErrSkipped = errors.New("skipped")
)

// ClaimLease is how long a claim on a dead letter holds without being
// finished. Handling one letter takes a few round trips; the lease only
// matters when its holder crashed, and then bounds how long the letter
// waits before the next replay or delete can take it.
const ClaimLease = time.Minute

// replayNamespace makes ReplayID's UUIDs certmail's own.
var replayNamespace = uuid.MustParse("48c539e8-3101-4d65-8e36-4de9793fea23")

// ReplayID is the ID of the task a replay of dead letter oldID enqueues:
// derived from oldID (UUID v5), so that every replay of one dead letter,
// concurrent or resumed after a crash, aims at the same task and asynq's
// TaskID conflict refuses all but the first.
func ReplayID(oldID string) string {
	return uuid.NewSHA1(replayNamespace, []byte(oldID)).String()
}

// workers bounds the concurrent Redis round trips of Replay and Delete.
const workers = 16

// Service reads and changes dead letters. It is safe for concurrent use.
type Service struct {
	store *outcome.Store
	insp  *asynq.Inspector
	enq   *tasks.Enqueuer
	now   func() time.Time
	lease time.Duration
	// enqueue is enq.EnqueueRawID; tests replace it to fail on purpose.
	enqueue func(ctx context.Context, id, taskType string, payload []byte, o tasks.Options) error

	migrateMu sync.Mutex
	migrated  bool // the legacy-key migration ran (see migrate)
}

// New returns a Service over rdb and store. It builds its own asynq
// Inspector and tasks.Enqueuer on rdb; Close closes those, not rdb.
func New(rdb redis.UniversalClient, store *outcome.Store) *Service {
	enq := tasks.NewEnqueuer(rdb)
	return &Service{
		store:   store,
		insp:    asynq.NewInspectorFromRedisClient(rdb),
		enq:     enq,
		now:     time.Now,
		lease:   ClaimLease,
		enqueue: enq.EnqueueRawID,
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
	// Provider keeps dead letters of one provider ("opensrs", "digicert":
	// tasks.Providers).
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
	if f.Provider != "" {
		if err := tasks.CheckProvider(f.Provider); err != nil {
			return err
		}
	}
	if f.Since < 0 {
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
		var tomb outcome.DeadOp
		if err == nil && !ok {
			tomb, err = s.store.Tombstone(ctx, id)
		}
		switch {
		case err != nil:
			return sel, err
		case !ok && tomb != "":
			sel.missing = append(sel.missing, idError{id, skipReason(id, outcome.DeadClaim{Tombstone: tomb})})
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
	// NewID is the ID of the new task, set only when this call replayed it;
	// "" on a dry run, when skipped, or when Err is set before anything was
	// enqueued.
	NewID string
	// Err says why this dead letter was not (fully) replayed by this call.
	// It wraps ErrSkipped (someone else handled it: not a failure),
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
// Each letter is claimed, its archived task deleted, the successor task
// (ID ReplayID(old ID)) enqueued with the same type, payload bytes and
// max_retry (timeout from the archived task, tasks.DefaultTimeout when asynq
// no longer holds it; no dedup), then the record is replaced by a tombstone;
// see the package comment for why this is exactly once.
func (s *Service) Replay(ctx context.Context, f Filter, dryRun bool) ([]Replayed, error) {
	sel, err := s.selectDead(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]Replayed, len(sel.matched), len(sel.matched)+len(sel.missing))
	parallel(len(sel.matched), func(i int) {
		if dryRun {
			out[i] = s.replayDry(ctx, sel.matched[i])
		} else {
			out[i] = s.replayOne(ctx, sel.matched[i])
		}
	})
	for _, m := range sel.missing {
		out = append(out, Replayed{OldID: m.id, Err: m.error()})
	}
	return out, nil
}

// replayOptions checks that d can be replayed and returns the new task's
// options.
func (s *Service) replayOptions(ctx context.Context, d outcome.DeadLetter) (tasks.Options, error) {
	info, err := s.archivedOrGone(ctx, d)
	if err != nil {
		return tasks.Options{}, err
	}
	if _, err := tasks.Decode(d.Type, d.Payload); err != nil {
		return tasks.Options{}, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
	}
	o := tasks.DefaultOptions()
	o.DedupWindow = 0 // EnqueueRawID never dedups; say so anyway
	o.MaxRetry = max(d.MaxRetry, 0)
	if info != nil && info.Timeout >= time.Second {
		o.Timeout = info.Timeout
	}
	return o, o.Validate()
}

func (s *Service) replayDry(ctx context.Context, d outcome.DeadLetter) Replayed {
	if _, err := s.replayOptions(ctx, d); err != nil {
		return Replayed{OldID: d.ID, Err: fmt.Errorf("%s: %w", d.ID, err)}
	}
	return Replayed{OldID: d.ID}
}

// successor is the task a replay of d creates. Its queue is the one the
// payload's provider maps to (where EnqueueRawID puts it), which is d.Queue
// for every record the handler or the sweep writes.
func successor(d outcome.DeadLetter) outcome.Successor {
	q := d.Queue
	if p, err := tasks.Decode(d.Type, d.Payload); err == nil {
		q = string(p.Provider())
	}
	return outcome.Successor{Queue: q, ID: ReplayID(d.ID)}
}

// skipped is the ErrSkipped error for a claim on id this call lost.
func skipped(id string, c outcome.DeadClaim) error {
	return fmt.Errorf("%s: %w", id, skipReason(id, c))
}

func skipReason(id string, c outcome.DeadClaim) error {
	var why string
	switch {
	case c.HeldBy == outcome.OpReplay:
		why = "being replayed by another operator"
	case c.HeldBy == outcome.OpDelete:
		why = "being deleted by another operator"
	case c.HeldBy == outcome.OpExpire:
		why = "being removed by the retention sweep (DEADLETTER_RETENTION)"
	case c.HeldBy != "":
		why = "claimed by another operator"
	case c.Tombstone == outcome.OpReplay:
		why = fmt.Sprintf("already replayed (as %s) by another operator", ReplayID(id))
	case c.Tombstone == outcome.OpDelete:
		why = "already deleted by another operator"
	case c.Tombstone == outcome.OpExpire:
		why = "expired: older than DEADLETTER_RETENTION"
	default:
		why = "no longer a dead letter (run again from the dashboard, or handled by another operator)"
	}
	return fmt.Errorf("%w: %s", ErrSkipped, why)
}

// lostClaim: the claim lapsed while this call worked and another caller
// took the letter over (and finishes it, or has).
const lostClaim = "its claim expired and another operator took it over"

func (s *Service) replayOne(ctx context.Context, sel outcome.DeadLetter) Replayed {
	r := Replayed{OldID: sel.ID}
	fail := func(err error) Replayed {
		r.Err = fmt.Errorf("%s: %w", sel.ID, err)
		return r
	}
	token := uuid.NewString()
	succ := successor(sel)
	c, err := s.store.ClaimDead(ctx, sel.ID, outcome.OpReplay, token, s.lease, succ)
	if err != nil {
		return fail(err)
	}
	if !c.Won {
		r.Err = skipped(sel.ID, c)
		return r
	}
	d := c.Record
	// Past the claim, finish what was started even if ctx is cancelled.
	bg := context.WithoutCancel(ctx)
	release := func(err error) Replayed {
		if rerr := s.store.ReleaseDead(bg, d.ID, outcome.OpReplay, token); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fail(err)
	}
	if c.SuccessorSeen {
		// An earlier replay enqueued the successor and died before finishing.
		if info, err := s.taskInfo(bg, d); err == nil && info != nil && info.State == asynq.TaskStateArchived {
			if err := s.deleteTask(d); err != nil {
				return release(err)
			}
		}
	} else {
		o, err := s.replayOptions(ctx, d)
		if err != nil {
			return release(err)
		}
		if err := s.deleteTask(d); err != nil {
			return release(err)
		}
		// The claim could have lapsed while this call stalled; enqueue only
		// while still holding it.
		held, err := s.store.RenewDead(bg, d.ID, outcome.OpReplay, token, s.lease)
		if err != nil {
			return release(err)
		}
		if !held {
			r.Err = fmt.Errorf("%s: %w: %s", d.ID, ErrSkipped, lostClaim)
			return r
		}
		err = s.enqueue(bg, succ.ID, d.Type, d.Payload, o)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return release(fmt.Errorf("enqueue (the dead-letter record is kept; replay it again): %w", err))
		}
		// A conflict means another caller of this letter enqueued it: it is
		// the one successor, and this call may still be the one to finish.
	}
	done, err := s.store.FinishDead(bg, d.ID, outcome.OpReplay, token, outcome.OpReplay)
	if err != nil {
		return fail(fmt.Errorf("replayed as %s but the record was not removed (a later replay only finishes it): %w", succ.ID, err))
	}
	if !done {
		r.Err = fmt.Errorf("%s: %w: %s", d.ID, ErrSkipped, lostClaim)
		return r
	}
	r.NewID = succ.ID
	return r
}

// Delete removes every dead letter matching f, record and archived asynq
// task, and returns the IDs it deleted in List order. Dead letters it could
// not delete (unknown ID, task live again, Redis failure) are reported in
// the joined error, and so are the ones another operator handled first
// (errors.Is ErrSkipped, not failures); the others are deleted regardless.
// Each letter is claimed and finished as Replay does, with the tombstone
// "deleted".
func (s *Service) Delete(ctx context.Context, f Filter) ([]string, error) {
	sel, err := s.selectDead(ctx, f)
	if err != nil {
		return []string{}, err
	}
	errs := make([]error, len(sel.matched))
	parallel(len(sel.matched), func(i int) {
		errs[i] = s.deleteOne(ctx, sel.matched[i], outcome.OpDelete)
	})
	deleted := make([]string, 0, len(sel.matched))
	for i, d := range sel.matched {
		if errs[i] == nil {
			deleted = append(deleted, d.ID)
		}
	}
	for _, m := range sel.missing {
		errs = append(errs, m.error())
	}
	return deleted, errors.Join(errs...) // Join skips the nils
}

// deleteOne deletes one dead letter as op (OpDelete for an operator,
// OpExpire for the retention sweep), which its tombstone then names.
func (s *Service) deleteOne(ctx context.Context, sel outcome.DeadLetter, op outcome.DeadOp) error {
	token := uuid.NewString()
	succ := successor(sel)
	c, err := s.store.ClaimDead(ctx, sel.ID, op, token, s.lease, succ)
	if err != nil {
		return fmt.Errorf("%s: %w", sel.ID, err)
	}
	if !c.Won {
		return skipped(sel.ID, c)
	}
	d := c.Record
	bg := context.WithoutCancel(ctx)
	finish := func(tomb outcome.DeadOp) error {
		done, err := s.store.FinishDead(bg, d.ID, op, token, tomb)
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", d.ID, err)
		case !done:
			return fmt.Errorf("%s: %w: %s", d.ID, ErrSkipped, lostClaim)
		}
		return nil
	}
	if c.SuccessorSeen {
		// A replay enqueued the successor and died before finishing: the
		// letter is replayed; deleting it now would make it both.
		if err := finish(outcome.OpReplay); err != nil {
			return err
		}
		return fmt.Errorf("%s: %w: already replayed (as %s) by an interrupted replay, not deleted", d.ID, ErrSkipped, succ.ID)
	}
	release := func(err error) error {
		if rerr := s.store.ReleaseDead(bg, d.ID, op, token); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("%s: %w", d.ID, err)
	}
	if _, err := s.archivedOrGone(ctx, d); err != nil {
		return release(err)
	}
	if err := s.deleteTask(d); err != nil {
		return release(err)
	}
	return finish(op)
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

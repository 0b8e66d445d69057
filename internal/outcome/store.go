package outcome

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/rdb"
)

// Defaults for a Store.
const (
	DefaultRetention    = 7 * 24 * time.Hour
	DefaultStreamMaxLen = 100_000
	// MaxAttemptsKept bounds one task's attempt history: rate-limit bounces
	// do not spend the retry budget, so without a cap a task bouncing for
	// days would grow its list without end. The newest attempts are kept
	// (each carries its own attempt number, so a gap is visible).
	MaxAttemptsKept = 100
)

// Store writes and reads attempts and dead letters in Redis, through the
// rdb layer (which owns the keys and scripts).
type Store struct {
	rdb       *rdb.Client
	retention time.Duration
	streamMax int64
}

// NewStore returns a Store. retention is how long attempt histories and
// success marks of live tasks are kept (0 means DefaultRetention).
func NewStore(c redis.UniversalClient, retention time.Duration) *Store {
	if retention <= 0 {
		retention = DefaultRetention
	}
	return &Store{rdb: rdb.New(c), retention: retention, streamMax: DefaultStreamMaxLen}
}

// Record writes one attempt, and the dead-letter record when the attempt
// ended the task, in a single pipelined round trip.
//
// A non-dead attempt also removes any dead-letter record of the same task:
// a task replayed from the dashboard keeps its ID, and once it runs again it
// is no longer dead.
func (s *Store) Record(ctx context.Context, a Attempt, dead *DeadLetter) error {
	return s.RecordWithResult(ctx, a, dead, nil)
}

// RecordWithResult is Record plus, when result is not nil, the task's asynq
// result (what its ResultWriter would write), in the same round trip.
func (s *Store) RecordWithResult(ctx context.Context, a Attempt, dead *DeadLetter, result []byte) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("outcome: encode attempt: %w", err)
	}
	w := rdb.Attempt{TaskID: a.TaskID, Outcome: string(a.Outcome), JSON: b,
		Succeeded: a.Outcome == Succeeded, At: a.At, Claim: a.Claim}
	if dead != nil {
		if w.Dead, err = json.Marshal(dead); err != nil {
			return fmt.Errorf("outcome: encode dead letter: %w", err)
		}
		w.DiedAt = dead.LastFailedAt
	}
	limits := rdb.RecordLimits{Retention: s.retention, StreamMax: s.streamMax, AttemptsMax: MaxAttemptsKept}
	if result != nil {
		err = s.rdb.RecordAttemptWithResult(ctx, w, limits, a.Queue, result)
	} else {
		err = s.rdb.RecordAttempt(ctx, w, limits)
	}
	if err != nil {
		return fmt.Errorf("outcome: record attempt: %w", err)
	}
	return nil
}

// ClaimState is the answer of Claim.
type ClaimState int

// Claim answers.
const (
	// Claimed: this delivery may call the provider.
	Claimed ClaimState = rdb.Claimed
	// AlreadySucceeded: an earlier delivery succeeded; do not call again.
	AlreadySucceeded ClaimState = rdb.AlreadySucceeded
	// InFlight: another delivery of the same task is calling the provider
	// right now (asynq redelivered it after a lease expiry or a timeout).
	InFlight ClaimState = rdb.InFlight
)

// Claim checks the task's success mark and, if there is none, claims the
// right to call the provider for ttl, in one round trip. token identifies
// this delivery; Record with Attempt.Claim set to it releases the claim.
// The time returned is when the task succeeded (AlreadySucceeded) or how long
// the other delivery's claim still holds (InFlight, as a duration from now).
func (s *Store) Claim(ctx context.Context, taskID, token string, ttl time.Duration) (ClaimState, time.Time, time.Duration, error) {
	state, at, left, err := s.rdb.ClaimTask(ctx, taskID, token, ttl)
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("outcome: claim task: %w", err)
	}
	return ClaimState(state), at, left, nil
}

// SucceededAt reports whether the task already succeeded (its idempotency
// mark exists), and when.
func (s *Store) SucceededAt(ctx context.Context, taskID string) (time.Time, bool, error) {
	at, ok, err := s.rdb.SucceededAt(ctx, taskID)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("outcome: read success mark: %w", err)
	}
	return at, ok, nil
}

// Attempts returns the recorded attempts of a task, oldest first.
func (s *Store) Attempts(ctx context.Context, taskID string) ([]Attempt, error) {
	raw, err := s.rdb.Attempts(ctx, taskID)
	if err != nil {
		return nil, fmt.Errorf("outcome: read attempts: %w", err)
	}
	out := make([]Attempt, 0, len(raw))
	for _, r := range raw {
		var a Attempt
		if err := json.Unmarshal([]byte(r), &a); err != nil {
			return nil, fmt.Errorf("outcome: decode attempt of %s: %w", taskID, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// AddDead records a dead letter found in asynq's archive, and reports
// whether it added one. The reconciler uses it for tasks that died without
// passing through the handler (worker crash, lease expiry).
//
// It adds the record only if the task is still in its queue's archive
// (read first: asynq's key is in another cluster slot) and then, in one
// script on the task's own keys, only if there is no record, no tombstone
// says the dead letter was replayed or deleted, and no success mark says it
// was run again and succeeded. A sweep that listed the archive just before
// an operator replayed or deleted the task therefore never brings the
// record back. The index entry is written after the script (see
// rdb.Client.AddDead).
func (s *Store) AddDead(ctx context.Context, d DeadLetter) (bool, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return false, fmt.Errorf("outcome: encode dead letter: %w", err)
	}
	added, err := s.rdb.AddDead(ctx, d.ID, d.Queue, b, d.LastFailedAt)
	if err != nil {
		return false, fmt.Errorf("outcome: add dead letter: %w", err)
	}
	return added, nil
}

// TombstoneTTL is how long a tombstone says what became of a dead letter.
// The sweep (every RECONCILE_INTERVAL, 1m by default) cannot bring back a
// task that is no longer archived anyway; the tombstone also covers a
// sweep that reads the archive before the task leaves it and writes after
// the record is gone, and tells a late operator who handled the letter. A
// day is far above any sweep interval and still tells an operator coming
// back the next morning.
const TombstoneTTL = 24 * time.Hour

// DeadOp is what an operator does to a dead letter; its value is what the
// tombstone says afterwards.
type DeadOp string

// Dead-letter operations.
const (
	OpReplay DeadOp = "replayed"
	OpDelete DeadOp = "deleted"
	// OpExpire is a delete by the retention sweep (DEADLETTER_RETENTION),
	// not by an operator.
	OpExpire DeadOp = "expired"
)

// Successor names the task a replay of a dead letter creates (or created).
// Its ID is derived from the dead letter's, so every replay of one dead
// letter, interrupted or concurrent, aims at the same task.
type Successor struct {
	Queue string
	ID    string
}

// DeadClaim is the answer of ClaimDead.
type DeadClaim struct {
	// Won: the caller holds the claim until FinishDead, ReleaseDead or the
	// lease runs out.
	Won bool
	// Record is the dead letter as it is now (Won only).
	Record DeadLetter
	// SuccessorSeen: the successor task exists in asynq or has left traces
	// (attempts, success mark, its own dead letter or tombstone), so an
	// earlier, interrupted replay already enqueued it (Won only).
	SuccessorSeen bool
	// Tombstone is what became of a dead letter whose record is gone ("" when
	// there is no tombstone: never existed, running again after the
	// dashboard's Run, or tombstone expired). Set when !Won and HeldBy == "".
	Tombstone DeadOp
	// HeldBy is the operation of another caller's live claim (!Won only).
	HeldBy DeadOp
}

func claimValue(op DeadOp, token string) string { return string(op) + ":" + token }

// ClaimDead claims dead letter id for op, in one script: it succeeds only if
// the record still exists and no other caller holds a live claim on it.
// token identifies the caller (unique per call); the claim expires after
// lease, so a caller that crashes leaves the dead letter replayable by the
// next one. The claim also reports whether succ, the task a replay creates,
// already exists or existed (see DeadClaim.SuccessorSeen).
func (s *Store) ClaimDead(ctx context.Context, id string, op DeadOp, token string, lease time.Duration, succ Successor) (DeadClaim, error) {
	r, err := s.rdb.ClaimDead(ctx, id, claimValue(op, token), lease, succ.Queue, succ.ID)
	if err != nil {
		return DeadClaim{}, fmt.Errorf("outcome: claim dead letter: %w", err)
	}
	switch {
	case r.Won:
		var d DeadLetter
		if err := json.Unmarshal([]byte(r.Record), &d); err != nil {
			return DeadClaim{}, fmt.Errorf("outcome: decode dead letter %s: %w", id, err)
		}
		return DeadClaim{Won: true, Record: d, SuccessorSeen: r.SuccessorSeen}, nil
	case r.Held != "":
		op, _, _ := strings.Cut(r.Held, ":")
		return DeadClaim{HeldBy: DeadOp(op)}, nil
	default:
		return DeadClaim{Tombstone: DeadOp(r.Tombstone)}, nil
	}
}

// RenewDead extends a claim for another lease and reports whether the
// caller still holds it (a claim that lapsed is taken again if nobody else
// took it and the record is still there). Callers renew right before a side
// effect that must not happen once the claim has passed to someone else.
func (s *Store) RenewDead(ctx context.Context, id string, op DeadOp, token string, lease time.Duration) (bool, error) {
	ok, err := s.rdb.RenewDead(ctx, id, claimValue(op, token), lease)
	if err != nil {
		return false, fmt.Errorf("outcome: renew dead-letter claim: %w", err)
	}
	return ok, nil
}

// FinishDead ends a claim by removing the dead letter: record and index
// entry are deleted and a tombstone saying tomb is written (TombstoneTTL),
// in one script, only if the caller still holds the claim, or its claim
// lapsed but nobody else took it and the record is still there (it reports
// whether it finished). The attempt history then expires with the retention.
func (s *Store) FinishDead(ctx context.Context, id string, op DeadOp, token string, tomb DeadOp) (bool, error) {
	ok, err := s.rdb.FinishDead(ctx, id, claimValue(op, token), string(tomb), TombstoneTTL, s.retention)
	if err != nil {
		return false, fmt.Errorf("outcome: finish dead letter: %w", err)
	}
	return ok, nil
}

// ReleaseDead gives a claim up, leaving the dead letter as it was: the
// caller refused it or failed before changing anything for good.
func (s *Store) ReleaseDead(ctx context.Context, id string, op DeadOp, token string) error {
	if err := s.rdb.ReleaseDead(ctx, id, claimValue(op, token)); err != nil {
		return fmt.Errorf("outcome: release dead-letter claim: %w", err)
	}
	return nil
}

// Tombstone returns what became of a dead letter whose record is gone, or
// "" when no tombstone (or one that expired) says.
func (s *Store) Tombstone(ctx context.Context, id string) (DeadOp, error) {
	v, err := s.rdb.Tombstone(ctx, id)
	if err != nil {
		return "", fmt.Errorf("outcome: read tombstone: %w", err)
	}
	return DeadOp(v), nil
}

// HasDead reports, for each id, whether a dead-letter record exists.
func (s *Store) HasDead(ctx context.Context, ids []string) ([]bool, error) {
	out, err := s.rdb.HasDead(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("outcome: check dead letters: %w", err)
	}
	return out, nil
}

// DeadLetters returns every dead letter, oldest death first. It never pages
// or caps: callers filter.
func (s *Store) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	ids, err := s.rdb.DeadIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("outcome: list dead letters: %w", err)
	}
	return s.deadLetters(ctx, ids)
}

// DeadLettersBefore returns every dead letter that died before t, oldest
// first, reading only those (the index is scored by time of death): the
// retention sweep runs it every RECONCILE_INTERVAL.
func (s *Store) DeadLettersBefore(ctx context.Context, t time.Time) ([]DeadLetter, error) {
	ids, err := s.rdb.DeadIDsBefore(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("outcome: list dead letters: %w", err)
	}
	return s.deadLetters(ctx, ids)
}

func (s *Store) deadLetters(ctx context.Context, ids []string) ([]DeadLetter, error) {
	recs, found, err := s.rdb.DeadRecords(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("outcome: read dead letters: %w", err)
	}
	out := make([]DeadLetter, 0, len(ids))
	var gone []string
	for i, rec := range recs {
		if !found[i] { // index entry without record: deleted concurrently, or a finish cut short
			gone = append(gone, ids[i])
			continue
		}
		var d DeadLetter
		if err := json.Unmarshal([]byte(rec), &d); err != nil {
			return nil, fmt.Errorf("outcome: decode dead letter %s: %w", ids[i], err)
		}
		out = append(out, d)
	}
	if len(gone) > 0 {
		// Best effort: the listing is right without it, and the next one
		// tries again.
		_, _ = s.rdb.DropDeadIndex(ctx, gone)
	}
	return out, nil
}

// Reindex adds to the dead-letter index every one of ids that has a record
// but no index entry (a record whose AddDead or Record stopped between its
// steps: on a Redis Cluster record and index live in different slots), with
// the record's time of death, and reports how many it added.
func (s *Store) Reindex(ctx context.Context, ids []string) (int, error) {
	in, err := s.rdb.DeadIndexed(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("outcome: read dead-letter index: %w", err)
	}
	var missing []string
	for i, id := range ids {
		if !in[i] {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	recs, found, err := s.rdb.DeadRecords(ctx, missing)
	if err != nil {
		return 0, fmt.Errorf("outcome: read dead letters: %w", err)
	}
	n := 0
	for i, rec := range recs {
		var d DeadLetter
		if !found[i] || json.Unmarshal([]byte(rec), &d) != nil {
			continue // gone meanwhile, or unreadable (listings report it)
		}
		if err := s.rdb.IndexDead(ctx, missing[i], d.LastFailedAt); err != nil {
			return n, fmt.Errorf("outcome: index dead letter: %w", err)
		}
		n++
	}
	return n, nil
}

// MigrateLegacy moves the per-task keys written before certmail's keys
// carried hash tags to their new names (rdb.Client.MigrateLegacy) and
// indexes every dead-letter record that has no index entry. It SCANs the
// keyspace: run it once per process. It returns the number of keys moved
// and of records indexed.
func (s *Store) MigrateLegacy(ctx context.Context) (moved, indexed int, err error) {
	m, err := s.rdb.MigrateLegacy(ctx)
	if err != nil {
		return m.Moved, 0, fmt.Errorf("outcome: migrate legacy keys: %w", err)
	}
	indexed, err = s.Reindex(ctx, m.DeadIDs)
	return m.Moved, indexed, err
}

// DeadLetter returns one dead letter.
func (s *Store) DeadLetter(ctx context.Context, id string) (DeadLetter, bool, error) {
	v, ok, err := s.rdb.DeadRecord(ctx, id)
	if err != nil {
		return DeadLetter{}, false, fmt.Errorf("outcome: read dead letter: %w", err)
	}
	if !ok {
		return DeadLetter{}, false, nil
	}
	var d DeadLetter
	if err := json.Unmarshal([]byte(v), &d); err != nil {
		return DeadLetter{}, false, fmt.Errorf("outcome: decode dead letter %s: %w", id, err)
	}
	return d, true, nil
}

// DeleteDead removes dead-letter records. Their attempt histories are kept
// for the retention window, so a replayed task's past can still be read.
// It neither claims nor tombstones: dlq replay and delete use ClaimDead and
// FinishDead, which are safe against each other and against the sweep.
func (s *Store) DeleteDead(ctx context.Context, ids ...string) error {
	if err := s.rdb.DeleteDead(ctx, s.retention, ids...); err != nil {
		return fmt.Errorf("outcome: delete dead letters: %w", err)
	}
	return nil
}

// CountDead returns the number of dead letters (one ZCARD, cheap enough for
// every metrics scrape).
func (s *Store) CountDead(ctx context.Context) (int64, error) {
	n, err := s.rdb.CountDead(ctx)
	if err != nil {
		return 0, fmt.Errorf("outcome: count dead letters: %w", err)
	}
	return n, nil
}

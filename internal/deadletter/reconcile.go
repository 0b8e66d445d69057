package deadletter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/tasks"
)

// reconcilePageSize is the page size used to walk asynq's archive.
const reconcilePageSize = 1000

// Reconcile records every task in asynq's archive (every queue of
// tasks.Queues, all pages) that has no dead-letter record yet, and reports
// how many it added. Such tasks died without the handler seeing it: the
// recoverer archives a task whose worker crashed with its budget spent, and
// the dashboard can archive tasks by hand. Their records have Source
// "reconciled" and Class "unknown"; a record the handler writes later wins.
//
// It is idempotent and safe to run concurrently with workers, with itself
// and with Replay and Delete: a record is added by one script that checks,
// at that instant, that there is no record and no tombstone and that the
// task is still archived (outcome.AddDead), so a dead letter replayed or
// deleted after this sweep listed the archive is never brought back. The
// worker runs it periodically, cmd/dlq before every command. Tasks archived
// while it pages may be missed by this run and are caught by the next.
//
// The first Reconcile of a Service also moves keys an older certmail wrote
// under untagged names (outcome.Store.MigrateLegacy, a SCAN), and every run
// indexes archived tasks' records that have no index entry.
func (s *Service) Reconcile(ctx context.Context) (added int, err error) {
	if err := s.migrate(ctx); err != nil {
		return 0, err
	}
	for _, q := range tasks.Queues {
		n, err := s.reconcileQueue(ctx, q)
		added += n
		if err != nil {
			return added, err
		}
	}
	return added, nil
}

func (s *Service) reconcileQueue(ctx context.Context, queue string) (int, error) {
	added := 0
	// Stop on an empty page, not a short one: asynq drops undecodable
	// entries from a page, so a short page is not proof of the end.
	for page := 1; ; page++ {
		if err := ctx.Err(); err != nil {
			return added, err
		}
		infos, err := s.insp.ListArchivedTasks(queue, asynq.PageSize(reconcilePageSize), asynq.Page(page))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return added, nil // nothing was ever enqueued there
		}
		if err != nil {
			return added, fmt.Errorf("deadletter: list archived tasks of queue %s: %w", queue, err)
		}
		if len(infos) == 0 {
			return added, nil
		}
		ids := make([]string, len(infos))
		for i, info := range infos {
			ids[i] = info.ID
		}
		// A cheap pipelined pre-check, so the script runs only for tasks
		// without a record; the script decides.
		has, err := s.store.HasDead(ctx, ids)
		if err != nil {
			return added, err
		}
		// A record whose index entry was never written (AddDead or the
		// handler's Record cut short between its steps) is invisible to
		// listings: index it.
		var recorded []string
		for i, id := range ids {
			if has[i] {
				recorded = append(recorded, id)
			}
		}
		if _, err := s.store.Reindex(ctx, recorded); err != nil {
			return added, err
		}
		now := s.now()
		for i, info := range infos {
			if has[i] || info.ID == "" { // "" is a hash deleted under us
				continue
			}
			ok, err := s.store.AddDead(ctx, fromTaskInfo(info, now))
			if err != nil {
				return added, err
			}
			if ok {
				added++
			}
		}
	}
}

// migrate runs the store's legacy-key migration (outcome.Store.
// MigrateLegacy, a SCAN of the keyspace) once per Service: a worker's first
// sweep, and every dlq command, which builds a Service of its own. A failed
// run is tried again by the next Reconcile.
func (s *Service) migrate(ctx context.Context) error {
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	if s.migrated {
		return nil
	}
	if _, _, err := s.store.MigrateLegacy(ctx); err != nil {
		return fmt.Errorf("deadletter: %w", err)
	}
	s.migrated = true
	return nil
}

// fromTaskInfo builds the record of a task found in the archive. A task
// archived by hand has no LastFailedAt; the time it was found stands in.
func fromTaskInfo(info *asynq.TaskInfo, now time.Time) outcome.DeadLetter {
	orderID, ref := tasks.Meta(info.Payload)
	at := info.LastFailedAt
	if at.IsZero() {
		at = now
	}
	return outcome.DeadLetter{
		ID:           info.ID,
		Type:         info.Type,
		Queue:        info.Queue,
		Provider:     info.Queue,
		OrderID:      orderID,
		Reference:    redact.Emails(ref),
		Payload:      outcome.Payload(info.Payload),
		Retried:      info.Retried,
		MaxRetry:     info.MaxRetry,
		LastError:    redact.Emails(info.LastErr),
		LastFailedAt: at.UTC(),
		Class:        "unknown",
		Source:       "reconciled",
	}
}

package deadletter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certmail/certmail/internal/outcome"
)

// DefaultRetention is how long a dead letter is kept when nobody replays or
// deletes it (DEADLETTER_RETENTION): long enough for any investigation, and
// as long as asynq keeps an archived task, so the two agree.
const DefaultRetention = 90 * 24 * time.Hour

// MinRetention is the shortest DEADLETTER_RETENTION accepted (other than 0,
// keep forever): a shorter one would remove letters before an operator
// coming back the next morning has seen them.
const MinRetention = 24 * time.Hour

// Prune removes every dead letter that died more than retention ago, and
// reports how many it removed. Each goes exactly as `dlq delete` would take
// it (claim, delete the archived task, finish), with the tombstone
// "expired": a letter an operator is replaying or deleting right now is
// left to them, one run again from the dashboard is left alive, and the
// sweep cannot bring one back from asynq's archive. retention 0 keeps
// everything.
func (s *Service) Prune(ctx context.Context, retention time.Duration) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	old, err := s.store.DeadLettersBefore(ctx, s.now().Add(-retention))
	if err != nil {
		return 0, err
	}
	errs := make([]error, len(old))
	parallel(len(old), func(i int) {
		errs[i] = s.deleteOne(ctx, old[i], outcome.OpExpire)
	})
	n := 0
	var failed []error
	for _, err := range errs {
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrSkipped), errors.Is(err, ErrNotArchived):
			// Someone else has it, or it is alive again: not ours to expire.
		default:
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return n, fmt.Errorf("deadletter: prune: %w", errors.Join(failed...))
	}
	return n, nil
}

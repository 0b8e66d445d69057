package deadletter

import (
	"context"
	"time"

	"github.com/certmail/certmail/internal/tasks"
)

// SetEnqueue replaces how s enqueues a replay's successor.
func SetEnqueue(s *Service, f func(ctx context.Context, id, taskType string, payload []byte, o tasks.Options) error) {
	s.enqueue = f
}

// Enqueue is the real enqueue of s, for a replaced one to call.
func Enqueue(s *Service) func(ctx context.Context, id, taskType string, payload []byte, o tasks.Options) error {
	return s.enq.EnqueueRawID
}

// SetLease sets the lease of s's claims.
func SetLease(s *Service, d time.Duration) { s.lease = d }

// SetNow sets the clock of s.
func SetNow(s *Service, now func() time.Time) { s.now = now }

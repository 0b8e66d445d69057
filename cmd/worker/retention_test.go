package main

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
)

// The worker's sweep removes dead letters older than DEADLETTER_RETENTION,
// and none with 0.
func TestSweepExpiresOldDeadLetters(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		store := outcome.NewStore(rdb, 0)
		ctx := t.Context()
		record := func(id string, diedAgo time.Duration) {
			at := time.Now().Add(-diedAgo)
			a := outcome.Attempt{TaskID: id, Type: "opensrs:resend_cert_email", Queue: "opensrs", Provider: "opensrs",
				OrderID: "1", Attempt: 1, Outcome: outcome.Dead, Class: "permanent", At: at}
			d := outcome.DeadLetter{ID: id, Type: a.Type, Queue: a.Queue, Provider: a.Provider, OrderID: "1",
				Payload: outcome.Payload(`{"order_id":"1"}`), LastError: "gone", LastFailedAt: at, Class: "permanent", Source: "handler"}
			require.NoError(t, store.Record(ctx, a, &d))
		}
		record("old", 91*24*time.Hour)
		record("young", 89*24*time.Hour)
		dl := deadletter.New(rdb, store)
		t.Cleanup(func() { _ = dl.Close() })
		log := slog.New(slog.DiscardHandler)

		sweep(ctx, dl, 0, log)
		n, err := store.CountDead(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 2, n, "DEADLETTER_RETENTION=0 keeps every dead letter")

		sweep(ctx, dl, deadletter.DefaultRetention, log)
		_, ok, err := store.DeadLetter(ctx, "old")
		require.NoError(t, err)
		require.False(t, ok, "older than 90 days: expired")
		_, ok, err = store.DeadLetter(ctx, "young")
		require.NoError(t, err)
		require.True(t, ok, "younger than 90 days: kept")
		tomb, err := store.Tombstone(ctx, "old")
		require.NoError(t, err)
		require.Equal(t, outcome.OpExpire, tomb)
	})
}

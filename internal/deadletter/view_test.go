package deadletter_test

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
)

// keysOf returns the keys of the JSON object v marshals to.
func keysOf(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return slices.Sorted(maps.Keys(m))
}

// TestView: the view has every key the stored record has when full, even
// for an empty record (the record omits an empty reference), and the detail
// adds asynq_state (null when asynq dropped the task) and attempts ([]).
func TestView(t *testing.T) {
	t.Parallel()
	full := outcome.DeadLetter{ID: "id", Type: "t", Queue: "q", Provider: "p", OrderID: "1", Reference: "r",
		Payload: outcome.Payload(`{"order_id":"1"}`), Retried: 1, MaxRetry: 2, LastError: "e",
		LastFailedAt: time.Unix(1, 0), Class: "permanent", Source: "handler"}
	recordKeys := keysOf(t, full)
	require.Contains(t, recordKeys, "reference")

	empty := outcome.DeadLetter{Payload: outcome.Payload(`{}`)}
	require.NotContains(t, keysOf(t, empty), "reference", "the stored record stays small")
	require.Equal(t, recordKeys, keysOf(t, deadletter.NewView(empty)))

	b, err := json.Marshal(deadletter.NewView(full))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, "r", m["reference"])
	require.Equal(t, map[string]any{"order_id": "1"}, m["payload"])

	tests := []struct {
		name      string
		detail    deadletter.Detail
		wantState any
	}{
		{"AsynqGone", deadletter.Detail{DeadLetter: empty}, nil},
		{"Archived", deadletter.Detail{DeadLetter: empty, State: "archived"}, "archived"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := tc.detail.View()
			require.Equal(t, slices.Sorted(slices.Values(append(slices.Clone(recordKeys), "asynq_state", "attempts"))), keysOf(t, v))
			b, err := json.Marshal(v)
			require.NoError(t, err)
			var m map[string]any
			require.NoError(t, json.Unmarshal(b, &m))
			require.Equal(t, tc.wantState, m["asynq_state"])
			require.Equal(t, []any{}, m["attempts"])
		})
	}
}

package rdb

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeys pins every key name: they are read by running workers and ops
// tools of other versions, so a change here is a migration.
func TestKeys(t *testing.T) {
	t.Parallel()

	tests := []struct{ got, want string }{
		{AttemptsKey("x"), "certmail:attempts:{x}"},
		{DeadKey("x"), "certmail:dead:{x}"},
		{DoneKey("x"), "certmail:done:{x}"},
		{InflightKey("x"), "certmail:inflight:{x}"},
		{DedupKey("abc"), "certmail:dedup:abc"},
		{DedupFailedKey("abc"), "certmail:dedup:abc:failed"},
		{OutcomesKey, "certmail:outcomes"},
		{DeadIndexKey, "certmail:dead"},
		{DeadClaimKey("x"), "certmail:deadclaim:{x}"},
		{TombKey("x"), "certmail:tomb:{x}"},
		{LegacyAttemptsKey("x"), "certmail:attempts:x"},
		{LegacyDeadKey("x"), "certmail:dead:x"},
		{LegacyDeadClaimKey("x"), "certmail:deadclaim:x"},
		{LegacyTombKey("x"), "certmail:tomb:x"},
		{RateLimitKey("digicert", "0123456789abcdef", 1), "certmail:ratelimit:{digicert:0123456789abcdef}:1"},
		{SlotsKey("opensrs", "0123456789abcdef"), "certmail:slots:{opensrs:0123456789abcdef}"},
		{AsynqArchivedKey("opensrs"), "asynq:{opensrs}:archived"},
		{AsynqTaskKey("opensrs", "x"), "asynq:{opensrs}:t:x"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			require.Equal(t, tc.want, tc.got)
		})
	}
}

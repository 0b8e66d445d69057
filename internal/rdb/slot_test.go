package rdb

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// slot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of its hash
// tag (the first non-empty {…}) or of the whole key, modulo 16384.
func slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

// TestSlots records which multi-key scripts stay in one cluster slot today
// (the package doc explains the rest). A script moving to one slot flips its
// row; one leaving it fails here first.
func TestSlots(t *testing.T) {
	t.Parallel()
	require.Equal(t, uint16(12182), slot("foo"), "the reference value of the Redis Cluster spec")
	require.Equal(t, slot("bar"), slot("{bar}:x"), "a hash tag decides the slot")

	const id, succ, queue = "0b0e7a4e-5b1a-4c1e-9f43-5e0c3f6a1b2c", "3f1d2c4b-8a7e-4f60-b1c2-d3e4f5a6b7c8", "opensrs"
	tests := []struct {
		name     string
		keys     []string
		sameSlot bool
	}{
		{"claimScript", []string{DoneKey(id), InflightKey(id)}, true},
		{"acquireSlotScript", []string{SlotsKey("opensrs", "0123456789abcdef")}, true},
		{"setIfScript", []string{IdempotencyKey("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")}, true},
		{"outageScripts", []string{OutageKey("digicert", "0123456789abcdef"), OutageFailsKey("digicert", "0123456789abcdef")}, true},
		{"reserveScript", []string{RateLimitKey("digicert", "0123456789abcdef", 0), RateLimitKey("digicert", "0123456789abcdef", 1),
			RateLimitKey("digicert", "0123456789abcdef", 2)}, true},
		{"addDeadScript", []string{DeadKey(id), TombKey(id), DeadIndexKey, AttemptsKey(id), AsynqArchivedKey(queue)}, false},
		{"claimDeadScript", []string{DeadKey(id), DeadClaimKey(id), TombKey(id),
			AsynqTaskKey(queue, succ), AttemptsKey(succ), DoneKey(succ), DeadKey(succ), TombKey(succ)}, false},
		{"renewDeadScript", []string{DeadClaimKey(id), DeadKey(id)}, false},
		{"finishDeadScript", []string{DeadKey(id), DeadClaimKey(id), TombKey(id), DeadIndexKey, AttemptsKey(id)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			same := true
			for _, k := range tc.keys[1:] {
				same = same && slot(k) == slot(tc.keys[0])
			}
			require.Equal(t, tc.sameSlot, same)
		})
	}
}

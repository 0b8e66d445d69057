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

// TestSlots: the keys of every multi-key script certmail runs hash to one
// cluster slot (the package doc lists them). TestClusterScripts runs them
// on a real cluster; this one says which keys, without a server.
func TestSlots(t *testing.T) {
	t.Parallel()
	require.Equal(t, uint16(12182), slot("foo"), "the reference value of the Redis Cluster spec")
	require.Equal(t, slot("bar"), slot("{bar}:x"), "a hash tag decides the slot")

	const id, succ = "0b0e7a4e-5b1a-4c1e-9f43-5e0c3f6a1b2c", "3f1d2c4b-8a7e-4f60-b1c2-d3e4f5a6b7c8"
	tests := []struct {
		name string
		keys []string
	}{
		{"recordScript and the claim pipeline (in order on one node)", []string{AttemptsKey(id), DeadKey(id), DoneKey(id), InflightKey(id)}},
		{"acquireSlotScript", []string{SlotsKey("opensrs", "0123456789abcdef")}},
		{"setIfScript", []string{IdempotencyKey("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")}},
		{"outageScripts", []string{OutageKey("digicert", "0123456789abcdef"), OutageFailsKey("digicert", "0123456789abcdef")}},
		{"reserveScript", []string{RateLimitKey("digicert", "0123456789abcdef", 0), RateLimitKey("digicert", "0123456789abcdef", 1),
			RateLimitKey("digicert", "0123456789abcdef", 2)}},
		{"addDeadScript", []string{DeadKey(id), TombKey(id), AttemptsKey(id), DoneKey(id)}},
		{"claimDeadScript", []string{DeadKey(id), DeadClaimKey(id), TombKey(id)}},
		{"renewDeadScript", []string{DeadClaimKey(id), DeadKey(id)}},
		{"finishDeadScript", []string{DeadKey(id), DeadClaimKey(id), TombKey(id), AttemptsKey(id)}},
		{"successor EXISTS", []string{AttemptsKey(succ), DoneKey(succ), DeadKey(succ), TombKey(succ)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range tc.keys[1:] {
				require.Equal(t, slot(tc.keys[0]), slot(k), "%s and %s", tc.keys[0], k)
			}
		})
	}
	t.Run("legacy names cross slots", func(t *testing.T) {
		// Why the migration moves them: the untagged names of one task
		// are spread over the cluster.
		require.NotEqual(t, slot(LegacyDeadKey(id)), slot(LegacyTombKey(id)))
		require.NotEqual(t, slot(DeadKey(id)), slot(DeadIndexKey), "the index is its own slot, kept out of every script")
	})
}

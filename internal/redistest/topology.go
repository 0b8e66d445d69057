package redistest

import (
	"os"
	"testing"
)

// RequireTopologiesEnv names the variable CI sets (to any non-empty value)
// so that a test needing a Redis topology this package launches itself (a
// Redis Cluster, Sentinels) fails instead of skipping when redis-server
// cannot be started: the same promise CERTMAIL_REQUIRE_REAL_REDIS makes for
// the single real server.
const RequireTopologiesEnv = "CERTMAIL_REQUIRE_TOPOLOGIES"

// requireTopologies reports whether a topology test must run (CI) rather
// than skip when its servers cannot be launched.
func requireTopologies() bool { return os.Getenv(RequireTopologiesEnv) != "" }

// topologyUnavailable skips t, or fails it under RequireTopologiesEnv, for a
// topology (what: "Redis Cluster", "Sentinel") that could not be started.
func topologyUnavailable(t testing.TB, what string, err error) {
	t.Helper()
	if requireTopologies() {
		t.Fatalf("redistest: %s required (%s is set) but unavailable: %v", what, RequireTopologiesEnv, err)
	}
	t.Skipf("redistest: no %s (%v); install redis-server to run this test", what, err)
}

package redistest

import (
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestServerStopStart: a client of a Server loses it on Stop and finds it
// again on Start, in both modes; the proxy mode is what REDIS_URL-only
// machines get.
func TestServerStopStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		make func(t *testing.T) *Server
	}{
		{"Own", func(t *testing.T) *Server {
			s, err := Own(t)
			// Without the binary (the REDIS_URL-only mode) the Proxy case
			// is what this machine's tests get; a binary that is there but
			// does not start is a failure.
			if errors.Is(err, exec.ErrNotFound) || errors.Is(err, errNoLaunch) {
				t.Skipf("no redis-server of our own (%v); the Proxy case covers this machine", err)
			}
			require.NoError(t, err)
			return s
		}},
		{"Proxy", func(t *testing.T) *Server { return proxied(t) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.make(t)
			opt, err := redis.ParseURL(s.URL())
			require.NoError(t, err)
			require.Equal(t, s.Addr(), opt.Addr)
			opt.MaxRetries = -1
			c := redis.NewClient(opt)
			t.Cleanup(func() { _ = c.Close() })
			require.NoError(t, c.Ping(t.Context()).Err())

			s.Stop()
			require.Eventually(t, func() bool { return c.Ping(t.Context()).Err() != nil },
				10*time.Second, 20*time.Millisecond, "a stopped server still answers")
			s.Stop() // idempotent

			s.Start()
			require.Eventually(t, func() bool { return c.Ping(t.Context()).Err() == nil },
				10*time.Second, 20*time.Millisecond, "the restarted server does not answer")
		})
	}
}

// TestNoLaunch: with CERTMAIL_TEST_NO_LAUNCH set, Own refuses to start a
// server even when the binary is on PATH.
func TestNoLaunch(t *testing.T) {
	t.Setenv(NoLaunchEnv, "1")
	_, err := Own(t)
	require.ErrorIs(t, err, errNoLaunch)
}

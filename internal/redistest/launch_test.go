package redistest

import (
	"errors"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLaunchOnATakenPort: a redis-server whose port another redis-server
// holds ends at once. launch neither takes the other's answers for its own
// nor waits its 10 s: it returns errPortTaken, the error retryPorts starts
// again on new ports, with redis-server's own words.
func TestLaunchOnATakenPort(t *testing.T) {
	t.Parallel()
	bin, err := lookServer()
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, errNoLaunch) {
		t.Skipf("no redis-server of our own (%v): nothing to launch", err)
	}
	require.NoError(t, err)
	// The port is taken by a server that answers: the case where another
	// test process started its redis-server on it first.
	other, err := Own(t)
	require.NoError(t, err)
	port, err := strconv.Atoi(other.Addr()[strings.LastIndexByte(other.Addr(), ':')+1:])
	require.NoError(t, err)

	start := time.Now()
	p, err := launch(bin, []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--dir", t.TempDir()}, "", nil, other.Addr())
	require.Nil(t, p)
	require.ErrorIs(t, err, errPortTaken)
	require.Contains(t, err.Error(), strconv.Itoa(port), "redis-server's own words")
	require.Less(t, time.Since(start), 5*time.Second, "noticed when the process ended, not at the 10-s timeout")
}

// TestRetryPorts: start is called again only after errPortTaken, at most
// launchAttempts times.
func TestRetryPorts(t *testing.T) {
	t.Parallel()
	other := errors.New("no such binary")
	tests := []struct {
		name    string
		results []error
		calls   int
		want    error
	}{
		{"first try", []error{nil}, 1, nil},
		{"port taken twice", []error{errPortTaken, errPortTaken, nil}, 3, nil},
		{"other error is not retried", []error{other}, 1, other},
		{"gives up", []error{errPortTaken, errPortTaken, errPortTaken, errPortTaken, errPortTaken, nil}, launchAttempts, errPortTaken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retryPorts(func() error {
				calls++
				return tc.results[calls-1]
			})
			require.Equal(t, tc.calls, calls)
			require.ErrorIs(t, err, tc.want)
			if tc.want == nil {
				require.NoError(t, err)
			}
		})
	}
}

// TestFreePort: ports are free, never handed out twice by one process, and
// below the kernel's ephemeral range where it is known, out of reach of
// the local ports of outgoing connections.
func TestFreePort(t *testing.T) {
	t.Parallel()
	lo, hi := belowEphemeral()
	seen := map[int]bool{}
	for range 50 {
		p, err := FreePort()
		require.NoError(t, err)
		require.False(t, seen[p], "port %d handed out twice", p)
		seen[p] = true
		if hi > lo {
			require.GreaterOrEqual(t, p, lo)
			require.Less(t, p, hi)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		require.NoError(t, err, "port %d is free", p)
		require.NoError(t, l.Close())
	}
}

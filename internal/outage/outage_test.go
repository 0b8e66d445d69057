package outage

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
)

// detailed is a classified provider error.
type detailed struct{ d providers.Detail }

func (e *detailed) Error() string            { return e.d.Message }
func (e *detailed) Detail() providers.Detail { return e.d }

var (
	err503     = &detailed{providers.Detail{Class: providers.Transient, StatusCode: 503, Message: "503 service unavailable"}}
	err404     = &detailed{providers.Detail{Class: providers.Permanent, StatusCode: 404, Message: "order not found"}}
	err429     = &detailed{providers.Detail{Class: providers.RateLimited, StatusCode: 429, Message: "too many requests", RetryAfter: time.Second}}
	errLimiter = &ratelimit.Error{Provider: providers.DigiCert, Class: providers.Transient, Err: errors.New("rate limiter: redis down")}
)

// fake is a provider whose answer can change; it counts the calls that
// reached it.
type fake struct {
	mu    sync.Mutex
	err   error
	calls atomic.Int64
}

func (f *fake) set(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

func (f *fake) Resend(context.Context, providers.Request) (providers.Result, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return providers.Result{}, f.err
	}
	return providers.Result{Provider: providers.DigiCert, StatusCode: 204}, nil
}

const cred = "api-key"

func config(threshold int, probe time.Duration) Config {
	return Config{Provider: providers.DigiCert, Credential: cred, Threshold: threshold, Window: time.Minute, ProbeInterval: probe}
}

func isOpen(t *testing.T, c redis.UniversalClient) bool {
	t.Helper()
	open, err := rdb.New(c).OutageOpen(context.Background(), string(providers.DigiCert), rdb.CredentialHash(cred))
	require.NoError(t, err)
	return open
}

func call(t *testing.T, r providers.Resender) error {
	_, err := r.Resend(t.Context(), providers.Request{OrderID: "1"})
	return err
}

// outageErr returns err's *Error, failing the test if there is none.
func outageErr(t *testing.T, err error) *Error {
	t.Helper()
	var oe *Error
	require.ErrorAs(t, err, &oe)
	d := providers.Describe(err)
	require.Equal(t, providers.RateLimited, d.Class, "a requeue that spends no budget")
	require.Equal(t, Code, d.Code)
	require.Positive(t, d.RetryAfter)
	return oe
}

// TestOpensAfterThresholdAndRefusesWithoutCalling: the threshold-th
// transient failure opens the circuit; the failures before it are
// returned as they were (charged), the one that opened it as an outage
// requeue, and from then on no call reaches the provider.
func TestOpensAfterThresholdAndRefusesWithoutCalling(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		f := &fake{err: err503}
		r := Wrap(f, c, config(3, time.Hour))
		for range 2 {
			require.ErrorIs(t, call(t, r), err503)
			require.False(t, isOpen(t, c))
		}
		opened := outageErr(t, call(t, r))
		require.ErrorIs(t, opened.Err, err503, "the failure that opened the circuit is kept as the cause")
		require.False(t, providers.Describe(opened).NotSent, "it was sent")
		require.True(t, isOpen(t, c))
		require.EqualValues(t, 3, f.calls.Load())
		for range 5 {
			oe := outageErr(t, call(t, r))
			require.Nil(t, oe.Err, "not sent")
			require.True(t, providers.Describe(oe).NotSent)
		}
		require.EqualValues(t, 3, f.calls.Load(), "no call reached the provider while open")
		require.True(t, r.(*Resender).Open())
	})
}

// TestCountsOnlyTransientFailures: permanent errors, provider rate limits
// and calls held back by the local limiter neither count nor reset; a
// success resets the count.
func TestCountsOnlyTransientFailures(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		f := &fake{}
		r := Wrap(f, c, config(3, time.Hour))
		steps := []struct {
			err  error
			open bool
		}{
			{err503, false}, {err503, false},
			{err404, false}, {err429, false}, {errLimiter, false}, {err404, false},
			{nil, false}, // resets
			{err503, false}, {err503, false},
			{err429, false}, {errLimiter, false},
			{err503, true},
		}
		for i, s := range steps {
			f.set(s.err)
			err := call(t, r)
			if s.err == nil {
				require.NoError(t, err, "step %d", i)
			} else {
				require.ErrorIs(t, err, s.err, "step %d", i)
			}
			require.Equal(t, s.open, isOpen(t, c), "step %d", i)
		}
	})
}

// TestOneProbePerIntervalAcrossFleet: three workers (own Redis clients),
// four callers each, hit an open circuit at once: exactly one call reaches
// the provider per probe interval; a failed probe keeps the circuit open,
// a successful one closes it and every call goes through again. The
// transitions are logged once for the fleet.
func TestOneProbePerIntervalAcrossFleet(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		const interval = 2 * time.Second
		f := &fake{err: err503}
		var logs syncBuffer
		var fleet []providers.Resender
		for range 3 {
			cfg := config(1, interval)
			cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			fleet = append(fleet, Wrap(f, b.Universal(t), cfg))
		}
		c := b.Universal(t)
		outageErr(t, call(t, fleet[0]))
		require.True(t, isOpen(t, c))
		burst := func() (sent int64) {
			before := f.calls.Load()
			var wg sync.WaitGroup
			for _, r := range fleet {
				for range 4 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						outageErr(t, call(t, r))
					}()
				}
			}
			wg.Wait()
			return f.calls.Load() - before
		}
		require.Zero(t, burst(), "no probe before the first interval has passed")
		waitProbeDue(interval)
		require.EqualValues(t, 1, burst(), "exactly one probe")
		require.True(t, isOpen(t, c), "a failed probe keeps the circuit open")
		require.Zero(t, burst(), "the next probe waits a whole interval")

		f.set(nil)
		waitProbeDue(interval)
		require.NoError(t, call(t, fleet[1]), "the probe")
		require.False(t, isOpen(t, c), "the probe's success closed the circuit")
		for _, r := range fleet {
			require.NoError(t, call(t, r))
		}

		out := logs.String()
		require.Equal(t, 1, strings.Count(out, "circuit opened"), out)
		require.Equal(t, 2, strings.Count(out, "circuit half-open"), out)
		require.Equal(t, 1, strings.Count(out, "probe failed"), out)
		require.Equal(t, 1, strings.Count(out, "circuit closed"), out)
	})
}

// waitProbeDue waits until the probe lease has lapsed, without taking it:
// a call would.
func waitProbeDue(interval time.Duration) { time.Sleep(interval + 100*time.Millisecond) }

// TestLastAttemptWaitsForTheProbe: a call on its task's last attempt that
// finds the circuit open waits in place and goes out as the probe once the
// interval has passed, instead of returning a requeue that would archive
// its task; other calls are sent back.
func TestLastAttemptWaitsForTheProbe(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		f := &fake{err: err503}
		cfg := config(1, 500*time.Millisecond)
		r := Wrap(f, c, cfg)
		outageErr(t, call(t, r))
		f.set(nil)
		outageErr(t, call(t, r)) // not the last attempt: sent back

		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := r.Resend(providers.WithLastAttempt(ctx), providers.Request{OrderID: "1"})
		require.NoError(t, err, "waited for the probe and was it")
		require.False(t, isOpen(t, c))
		require.EqualValues(t, 2, f.calls.Load())
	})
}

// TestOffReturnsTheClient: Threshold 0 turns outage handling off.
func TestOffReturnsTheClient(t *testing.T) {
	t.Parallel()
	f := &fake{}
	require.Same(t, f, Wrap(f, nil, config(0, time.Second)))
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

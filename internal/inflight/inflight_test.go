package inflight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redistest"
)

// resendFunc is a fake provider client.
type resendFunc func(ctx context.Context, req providers.Request) (providers.Result, error)

func (f resendFunc) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	return f(ctx, req)
}

// gauge counts calls in flight and the most seen at once.
type gauge struct{ now, most, calls atomic.Int64 }

func (g *gauge) resender(hold time.Duration) resendFunc {
	return func(ctx context.Context, _ providers.Request) (providers.Result, error) {
		n := g.now.Add(1)
		defer g.now.Add(-1)
		g.calls.Add(1)
		for m := g.most.Load(); n > m && !g.most.CompareAndSwap(m, n); m = g.most.Load() {
		}
		time.Sleep(hold)
		return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
	}
}

func config(capacity int, maxWait time.Duration) Config {
	return Config{Provider: providers.OpenSRS, Credential: "user\x00key", Cap: capacity, CallLimit: time.Minute, MaxWait: maxWait, RetriedInPlace: time.Second}
}

func held(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	n, err := rdb.New(c).SlotsHeld(context.Background(), string(providers.OpenSRS), rdb.CredentialHash("user\x00key"))
	require.NoError(t, err)
	return n
}

// TestCapHoldsAcrossWorkers: three Resenders on their own Redis clients
// (three workers) with 8 callers each never have more than the cap of 2
// calls in flight at once, and every call is made.
func TestCapHoldsAcrossWorkers(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		var g gauge
		var wg sync.WaitGroup
		var failed atomic.Int64
		for range 3 {
			r := Wrap(g.resender(15*time.Millisecond), b.Universal(t), config(2, 30*time.Second))
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 3 {
						if _, err := r.Resend(t.Context(), providers.Request{OrderID: "1"}); err != nil {
							failed.Add(1)
						}
					}
				}()
			}
		}
		wg.Wait()
		require.Zero(t, failed.Load())
		require.Equal(t, int64(72), g.calls.Load())
		require.Equal(t, int64(2), g.most.Load(), "the cap was reached and never passed")
		require.Zero(t, held(t, b.Universal(t)), "every slot was given back")
	})
}

// TestFullCapRequeues: with the cap held elsewhere, a call waits up to
// MaxWait, never reaches the provider, and comes back as a rate limit that
// was not sent, with the code recorded for the attempt and a wait long
// enough that the in-attempt retry sends it back to the queue.
func TestFullCapRequeues(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		ok, _, err := rdb.New(c).AcquireSlot(t.Context(), string(providers.OpenSRS), rdb.CredentialHash("user\x00key"), "other", 1, time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		var g gauge
		r := Wrap(g.resender(0), c, config(1, 300*time.Millisecond))
		start := time.Now()
		_, err = r.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "it waited in place first")
		var e *Error
		require.ErrorAs(t, err, &e)
		d := providers.Describe(err)
		require.Equal(t, providers.RateLimited, d.Class)
		require.Equal(t, Code, d.Code)
		require.True(t, d.NotSent)
		require.Greater(t, d.RetryAfter, time.Second, "longer than the caller retries in place")
		require.LessOrEqual(t, d.RetryAfter, 3*time.Second)
		require.Zero(t, g.calls.Load(), "the provider was not called")
		require.Equal(t, int64(1), held(t, c), "the other holder keeps its slot")
	})
}

// TestWaitStopsBeforeDeadline: a context whose deadline comes before
// MaxWait ends the wait as a requeue about half-way to the deadline, not as
// an expired context or a slot taken too late for the call (either would
// be charged as a failure).
func TestWaitStopsBeforeDeadline(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		c := b.Universal(t)
		_, _, err := rdb.New(c).AcquireSlot(t.Context(), string(providers.OpenSRS), rdb.CredentialHash("user\x00key"), "other", 1, time.Minute)
		require.NoError(t, err)
		r := Wrap(resendFunc(func(context.Context, providers.Request) (providers.Result, error) {
			return providers.Result{}, errors.New("must not be called")
		}), c, config(1, time.Minute))
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err = r.Resend(ctx, providers.Request{OrderID: "1"})
		require.NoError(t, ctx.Err(), "gave up before the deadline")
		require.Less(t, time.Since(start), 1500*time.Millisecond, "half the time is left to the call")
		require.Equal(t, providers.RateLimited, providers.Classify(err))
		require.NotErrorIs(t, err, context.DeadlineExceeded)
	})
}

// TestReleasedWhateverTheEnd: the slot is given back after a success, an
// error, a panic and a call whose context was cancelled meanwhile.
func TestReleasedWhateverTheEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		call resendFunc
	}{
		{"Success", func(context.Context, providers.Request) (providers.Result, error) { return providers.Result{}, nil }},
		{"Error", func(context.Context, providers.Request) (providers.Result, error) {
			return providers.Result{}, errors.New("boom")
		}},
		{"Panic", func(context.Context, providers.Request) (providers.Result, error) { panic("client bug") }},
		{"Cancelled", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
				c := b.Universal(t)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				call := tc.call
				if call == nil {
					call = func(ctx context.Context, _ providers.Request) (providers.Result, error) {
						cancel()
						<-ctx.Done()
						return providers.Result{}, ctx.Err()
					}
				}
				var during, local int64
				var r providers.Resender
				r = Wrap(resendFunc(func(ctx context.Context, req providers.Request) (providers.Result, error) {
					during, local = held(t, c), r.(*Resender).InUse()
					return call(ctx, req)
				}), c, config(1, time.Second))
				func() {
					defer func() { _ = recover() }()
					_, _ = r.Resend(ctx, providers.Request{OrderID: "1"})
				}()
				require.Equal(t, int64(1), during, "the slot was held during the call")
				require.Equal(t, int64(1), local, "InUse counts it")
				require.Zero(t, held(t, c), "and given back after it")
				require.Zero(t, r.(*Resender).InUse())
				require.Zero(t, r.(*Resender).Waiting())
			})
		})
	}
}

// TestLeaseCoversTheCall: the slot's lease is the call's limit (or what is
// left of the context, if shorter) plus LeaseMargin.
func TestLeaseCoversTheCall(t *testing.T) {
	t.Parallel()
	r := Wrap(resendFunc(nil), redis.NewClient(&redis.Options{}), config(1, time.Second)).(*Resender)
	require.Equal(t, time.Minute+LeaseMargin, r.lease(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := r.lease(ctx)
	require.LessOrEqual(t, l, 5*time.Second+LeaseMargin)
	require.Greater(t, l, 4*time.Second+LeaseMargin)
}

// TestNoCapNoWrapper: a cap of 0 leaves the client as it is.
func TestNoCapNoWrapper(t *testing.T) {
	t.Parallel()
	var g gauge
	next := g.resender(0)
	got := Wrap(next, nil, config(0, time.Second))
	_, ok := got.(resendFunc)
	require.True(t, ok)
}

// TestDeadlineDuringAcquireRequeues: a context that is already past its
// deadline (Redis answered too slowly) ends the wait as a requeue, not as
// a transient failure that would spend the budget; a cancelled one is
// reported as a cancellation.
func TestDeadlineDuringAcquireRequeues(t *testing.T) {
	t.Parallel()
	redistest.EachWithCluster(t, func(t *testing.T, b redistest.Backend) {
		r := Wrap(resendFunc(func(context.Context, providers.Request) (providers.Result, error) {
			return providers.Result{}, errors.New("must not be called")
		}), b.Universal(t), config(1, time.Second))
		ctx, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
		defer cancel()
		_, err := r.Resend(ctx, providers.Request{OrderID: "1"})
		require.Equal(t, providers.RateLimited, providers.Classify(err), "%v", err)

		ctx, cancel = context.WithCancel(t.Context())
		cancel()
		_, err = r.Resend(ctx, providers.Request{OrderID: "1"})
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, providers.Transient, providers.Classify(err))
	})
}

// TestFailedReleaseIsRetried: a release that cannot reach Redis (as in a
// Sentinel failover) is tried again once Redis answers, so the slot frees
// long before its lease (here a minute) ends.
func TestFailedReleaseIsRetried(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		direct := b.Client(t)
		opt, err := redis.ParseURL(b.URL)
		require.NoError(t, err)
		p := redistest.NewProxy(t, opt.Addr)
		opt.Addr, opt.MaxRetries = p.Addr(), -1
		c := redis.NewClient(opt)
		defer c.Close()
		r := Wrap(resendFunc(func(context.Context, providers.Request) (providers.Result, error) {
			p.Stop() // Redis goes away during the call
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200}, nil
		}), c, config(1, time.Second))
		_, err = r.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.NoError(t, err)
		require.Equal(t, int64(1), held(t, direct), "the release could not reach Redis")
		require.NoError(t, p.Start())
		require.Eventually(t, func() bool { return held(t, direct) == 0 }, 10*time.Second, 50*time.Millisecond,
			"slot still held after Redis came back")
	})
}

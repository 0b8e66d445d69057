package rdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// gate holds every pipeline at the hook until opened, and counts them.
type gate struct {
	n    atomic.Int64
	open chan struct{}
	seen chan struct{} // one send per pipeline reaching the hook
}

func (g *gate) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func newGate() *gate { return &gate{open: make(chan struct{}), seen: make(chan struct{}, 1000)} }

func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if n := cmds[0].Name(); n == "hello" || n == "client" || n == "auth" || n == "select" {
			return next(ctx, cmds) // a new connection's handshake
		}
		g.n.Add(1)
		g.seen <- struct{}{}
		<-g.open
		return next(ctx, cmds)
	}
}

// TestCoalescedCallersGetTheirOwnCommands: callers queued while a round
// trip is out go together in the next one, and each gets back its own
// commands in order with its own first error, never another caller's.
func TestCoalescedCallersGetTheirOwnCommands(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		ctx := t.Context()
		require.NoError(t, c.Set(ctx, "not-a-number", "x", 0).Err())
		g := newGate()
		c.AddHook(g)
		r := New(c)

		// The first callers' round trips (one per flusher) are held at
		// the hook, so the next callers queue behind them.
		first := make(chan error, maxFlushers)
		for range maxFlushers {
			go func() {
				_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "first"); return nil })
				first <- err
			}()
			<-g.seen
		}
		const callers = 20
		type answer struct {
			cmds []redis.Cmder
			err  error
		}
		answers := make([]answer, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				cmds, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
					key := fmt.Sprintf("caller:%d", i)
					p.IncrBy(ctx, key, int64(i))
					if i%5 == 0 {
						p.Incr(ctx, "not-a-number") // fails, for this caller only
					}
					p.Get(ctx, key)
					return nil
				})
				answers[i] = answer{cmds, err}
			})
		}
		// Every caller is queued once the queue holds them all.
		require.Eventually(t, func() bool { return queueLen(r) == callers }, 5*time.Second, time.Millisecond)
		close(g.open)
		wg.Wait()
		for range maxFlushers {
			require.NoError(t, <-first)
		}

		require.Equal(t, int64(maxFlushers+1), g.n.Load(), "one round trip for each first caller, one for the %d queued behind them", callers)
		for i, a := range answers {
			want := 2
			if i%5 == 0 {
				want = 3
				require.Error(t, a.err, "caller %d", i)
				require.Contains(t, a.err.Error(), "not an integer", "caller %d gets its own error", i)
			} else {
				require.NoError(t, a.err, "caller %d is not failed by another caller's command", i)
			}
			require.Len(t, a.cmds, want, "caller %d gets its own commands only", i)
			require.Equal(t, fmt.Sprint(i), a.cmds[len(a.cmds)-1].(*redis.StringCmd).Val(), "caller %d reads its own key", i)
		}
	})
}

func queueLen(r *Client) int {
	c := r.c.(*coalescing)
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// TestCoalescedCallerGoneBeforeSend: a caller whose context ends while it
// is still queued gets its context's error, and its commands never run; a
// caller whose fn fails gets that error, and its commands never run; the
// callers beside them are served.
func TestCoalescedCallerGoneBeforeSend(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		g := newGate()
		c.AddHook(g)
		r := New(c)
		ctx := t.Context()

		held := make(chan error, maxFlushers)
		for i := range maxFlushers {
			go func() {
				_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error { p.Set(ctx, fmt.Sprint("held", i), "1", 0); return nil })
				held <- err
			}()
			<-g.seen
		}

		gone, cancel := context.WithCancel(ctx)
		goneErr := make(chan error, 1)
		go func() {
			_, err := r.c.Pipelined(gone, func(p redis.Pipeliner) error { p.Set(ctx, "gone", "1", 0); return nil })
			goneErr <- err
		}()
		failErr := make(chan error, 1)
		go func() {
			_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "failed-fn", "1", 0)
				return errors.New("fn refused")
			})
			failErr <- err
		}()
		okErr := make(chan error, 1)
		go func() {
			_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error { p.Set(ctx, "beside", "1", 0); return nil })
			okErr <- err
		}()
		require.Eventually(t, func() bool { return queueLen(r) == 3 }, 5*time.Second, time.Millisecond)
		cancel()
		require.ErrorIs(t, <-goneErr, context.Canceled)
		close(g.open)
		for range maxFlushers {
			require.NoError(t, <-held)
		}
		require.EqualError(t, <-failErr, "fn refused")
		require.NoError(t, <-okErr)

		n, err := c.Exists(ctx, "held0", "beside").Result()
		require.NoError(t, err)
		require.Equal(t, int64(2), n)
		n, err = c.Exists(ctx, "gone", "failed-fn").Result()
		require.NoError(t, err)
		require.Zero(t, n, "commands of a caller gone before the send, or whose fn failed, never run")
	})
}

// TestClaimRaceOneCallPerTask: many deliveries of the same tasks claim at
// once, through the coalescer, and whichever wins records a success. Each
// task is "called" exactly once (it fails when a claim can be won after a
// success without its mark being read), and no claim is left behind, the
// ones taken by suppressed deliveries included.
func TestClaimRaceOneCallPerTask(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		r := New(b.Client(t))
		ctx := t.Context()
		const tasks, deliveries = 40, 8
		limits := RecordLimits{Retention: time.Hour, StreamMax: 1000, AttemptsMax: 100}
		var calls [tasks]atomic.Int32
		var wg sync.WaitGroup
		for id := range tasks {
			for d := range deliveries {
				wg.Go(func() {
					taskID := fmt.Sprintf("race-%d", id)
					token := fmt.Sprintf("tok-%d", d)
					for {
						state, _, _, err := r.ClaimTask(ctx, taskID, token, time.Minute)
						if err != nil {
							t.Error(err)
							return
						}
						switch state {
						case AlreadySucceeded:
							// The suppressed attempt's record drops a claim taken
							// before the mark was read.
							if err := r.RecordAttempt(ctx, Attempt{TaskID: taskID, Outcome: "succeeded", JSON: []byte(`{}`),
								Succeeded: true, At: time.Now(), Claim: token}, limits); err != nil {
								t.Error(err)
							}
							return
						case InFlight:
							time.Sleep(time.Millisecond)
							continue
						}
						calls[id].Add(1)
						if err := r.RecordAttempt(ctx, Attempt{TaskID: taskID, Outcome: "succeeded", JSON: []byte(`{}`),
							Succeeded: true, At: time.Now(), Claim: token}, limits); err != nil {
							t.Error(err)
						}
						return
					}
				})
			}
		}
		wg.Wait()
		for id := range tasks {
			require.Equal(t, int32(1), calls[id].Load(), "task %d called once", id)
			n, err := b.Client(t).Exists(ctx, InflightKey(fmt.Sprintf("race-%d", id))).Result()
			require.NoError(t, err)
			require.Zero(t, n, "no claim left on task %d", id)
		}
	})
}

// TestCoalescedCallerGoneDuringSend: a caller whose context ends while its
// round trip is out gets its context's error at once, without touching
// the commands a flusher is still reading into (-race sees it), and the
// commands do run.
func TestCoalescedCallerGoneDuringSend(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c := b.Client(t)
		ctx := t.Context()
		// Cached, so the record's EVALSHA runs (a NOSCRIPT answer would
		// need the EVAL of a caller that is gone).
		require.NoError(t, recordScript.Load(ctx, c).Err())
		g := newGate()
		c.AddHook(g)
		r := New(c)
		limits := RecordLimits{Retention: time.Hour, StreamMax: 100, AttemptsMax: 100}
		calls := []struct {
			name string
			call func(context.Context) error
		}{
			{"ClaimTask", func(ctx context.Context) error {
				_, _, _, err := r.ClaimTask(ctx, "gone-claim", "tok", time.Minute)
				return err
			}},
			{"RecordAttempt", func(ctx context.Context) error {
				return r.RecordAttempt(ctx, Attempt{TaskID: "gone-record", Outcome: "retrying", JSON: []byte(`{}`), Claim: "tok"}, limits)
			}},
			{"SetDedupMarks", func(ctx context.Context) error {
				_, errs := r.SetDedupMarks(ctx, []string{"gone-a", "gone-b"}, []string{"1", "2"}, time.Minute)
				return errors.Join(errs...)
			}},
		}
		for _, tc := range calls {
			t.Run(tc.name, func(t *testing.T) {
				// Before the send: nothing is sent, nothing panics.
				gone, cancel := context.WithCancel(ctx)
				cancel()
				require.ErrorIs(t, tc.call(gone), context.Canceled)

				// During the send: held at the gate (one flusher).
				sending, cancel := context.WithCancel(ctx)
				errc := make(chan error, 1)
				go func() { errc <- tc.call(sending) }()
				<-g.seen
				cancel()
				require.ErrorIs(t, <-errc, context.Canceled)
				g.open <- struct{}{}
			})
		}
		require.Eventually(t, func() bool {
			return c.Exists(ctx, InflightKey("gone-claim"), AttemptsKey("gone-record"), DedupKey("gone-a")).Val() == 3
		}, 5*time.Second, 10*time.Millisecond, "the commands sent ran")
	})
}

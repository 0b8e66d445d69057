package rdb

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coalescing of the hot path's pipelines (BENCHMARKS.md, "Where the time
// goes"): with a hundred task handlers each making a claim before its
// provider call and a record after it, most of what certmail costs Redis
// and the worker is the round trip itself (a write, a read and a wake-up on
// each side), not the few microseconds of each command. The coalescer sends
// the pipelines that concurrent callers ask for in one round trip: a caller
// queues its commands, and a flusher sends whatever is queued when it is
// free. Nothing waits on a timer: a lone caller goes at once, and batches
// grow only while earlier round trips are still out, so a quiet worker gets
// the latency of a plain call and a busy one fewer round trips.
//
// Each caller keeps the meaning of its own Pipelined call: its commands
// stay together and in order, and it gets its own commands back with the
// first error among them, never another caller's. A pipeline is not a
// transaction (nor is a go-redis Pipelined call): commands of one caller
// may interleave with another's on the server, which none of certmail's
// pipelines relies on.

// maxFlushers bounds the pipelines in flight at once; maxCoalesced the
// callers in one of them. One flusher makes the largest batches, so the
// fewest round trips per task: measured in the throughput figure
// (BENCHMARKS.md) about 4 callers per round trip with one flusher, 1.4
// with four, and the worker's ratio to the naive worker 0.74 with one
// against 0.66 with two (5 runs each, same session; 0.67 against 0.61 in an
// earlier one). A slow round trip (a failover, a stalled connection) holds
// up every caller behind it, as it would hold up their own round trips on
// the same Redis; each caller still stops waiting when its context ends.
const (
	maxFlushers  = 1
	maxCoalesced = 128
)

// flushTimeout bounds the context of a coalesced round trip; each caller
// also stops waiting when its own context ends. go-redis's read and write
// timeouts bound the socket calls themselves.
const flushTimeout = 30 * time.Second

// queued is one caller's Pipelined call waiting for a flusher.
type queued struct {
	ctx  context.Context
	fn   func(redis.Pipeliner) error
	done chan struct{}
	// state: 0 waiting, 1 taken by a flusher, 2 abandoned by its caller
	// (its context ended before a flusher took it: never sent).
	state atomic.Int32
	cmds  []redis.Cmder
	err   error
}

// coalesce returns c with its pipelines coalesced (c itself when it
// already is).
func coalesce(c redis.UniversalClient) redis.UniversalClient {
	if _, ok := c.(*coalescing); ok {
		return c
	}
	return &coalescing{UniversalClient: c}
}

// coalescing is the client with Pipelined coalesced; every other method is
// the client's own. (Coalescing asynq's own scripts too, by handing asynq
// this client with EvalSha coalesced, was measured and made the worker
// slower: BENCHMARKS.md.)
type coalescing struct {
	redis.UniversalClient
	mu       sync.Mutex
	queue    []*queued
	flushers int
}

// Pipelined runs fn's commands in a coalesced round trip and returns them
// with the first error among them, like the client's Pipelined. When the
// caller's context ends first it returns nil commands and the context's
// error: fn may then still be running, or its commands be read, on a
// flusher, so a caller must not touch what fn captured (the commands it
// queued) unless the returned commands are there.
func (c *coalescing) Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error) {
	q := &queued{ctx: ctx, fn: fn, done: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, q)
	if c.flushers < maxFlushers {
		c.flushers++
		go c.flush()
	}
	c.mu.Unlock()
	select {
	case <-q.done:
		return q.cmds, q.err
	case <-ctx.Done():
		if q.state.CompareAndSwap(0, 2) {
			return nil, ctx.Err()
		}
		// Already sent: like a plain call whose reply is lost, the
		// commands may have run.
		select {
		case <-q.done:
			return q.cmds, q.err
		default:
			return nil, ctx.Err()
		}
	}
}

// flush sends the queue in batches until it is empty, then exits.
func (c *coalescing) flush() {
	for {
		c.mu.Lock()
		n := min(len(c.queue), maxCoalesced)
		if n == 0 {
			c.flushers--
			c.mu.Unlock()
			return
		}
		batch := make([]*queued, 0, n)
		for _, q := range c.queue[:n] {
			if q.state.CompareAndSwap(0, 1) {
				batch = append(batch, q)
			}
		}
		clear(c.queue[:n])
		c.queue = c.queue[n:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		c.mu.Unlock()
		if len(batch) > 0 {
			c.send(batch)
		}
	}
}

// send runs one batch in one pipeline and hands each caller its commands.
func (c *coalescing) send(batch []*queued) {
	pipe := c.UniversalClient.Pipeline()
	ends := make([]int, len(batch))
	for i, q := range batch {
		start := pipe.Len()
		if q.err = q.fn(pipe); q.err != nil {
			// The caller's own error, as Pipelined returns it: its
			// commands are not sent.
			c.dropFrom(pipe, start)
		}
		ends[i] = pipe.Len()
	}
	var cmds []redis.Cmder
	var execErr error
	if pipe.Len() > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		cmds, execErr = pipe.Exec(ctx)
		cancel()
	}
	start := 0
	for i, q := range batch {
		if q.err == nil && len(cmds) < ends[i] {
			// Not expected of go-redis; never hand back unsent commands.
			q.err = execErr
			if q.err == nil {
				q.err = errUnexpected(len(cmds))
			}
		}
		if q.err == nil {
			q.cmds = cmds[start:ends[i]:ends[i]]
			for _, cmd := range q.cmds {
				if err := cmd.Err(); err != nil {
					q.err = err
					break
				}
			}
		}
		start = ends[i]
		close(q.done)
	}
}

// dropFrom removes the commands queued on pipe from index start on (a
// caller whose fn failed part-way). go-redis's Pipeliner cannot drop a
// suffix, so the batch is rebuilt without it.
func (c *coalescing) dropFrom(pipe redis.Pipeliner, start int) {
	keep := pipe.Cmds()[:start]
	kept := append([]redis.Cmder(nil), keep...)
	pipe.Discard()
	for _, cmd := range kept {
		_ = pipe.Process(context.Background(), cmd)
	}
}

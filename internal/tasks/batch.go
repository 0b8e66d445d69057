package tasks

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// BatchItem is one request of a batch: a line (or JSON array element) to
// decode with DecodeLine, or the reason it could not be read whole.
type BatchItem struct {
	N    int // 1-based position in the input
	Line []byte
	Err  error
	// Opts, when set, replaces the batch's options for this item (the API
	// lets each item carry max_retry, timeout and delay).
	Opts *Options
}

// BatchResult is the answer to one BatchItem.
type BatchResult struct {
	N         int
	ID        string
	Duplicate bool
	Err       error // a *FieldError, a decode error or the Enqueue error
}

// batchChunk is the most items one request to Redis carries the dedup
// marks of (enqueueChunk): items already read are enqueued together, so a
// file goes in chunks while a slow pipe still goes item by item.
const batchChunk = 32

// EnqueueBatch decodes and enqueues every item that items yields, with up
// to concurrency requests in flight, and hands results to emit in input
// order as soon as each is known. Valid items are enqueued even when others
// are bad. It is the engine of `enqueue batch` and of the HTTP API's
// POST /v1/resends:batch, so that both apply one rule set. items returns
// the error that stopped reading, if any; EnqueueBatch returns it wrapped.
//
// Each request takes the items already read, up to batchChunk, and sets
// their dedup marks in one round trip (enqueueChunk); an item with options
// of its own goes alone. idle, if not nil, is called before waiting for a
// result that is not there yet (`enqueue batch` flushes its output then).
func (e *Enqueuer) EnqueueBatch(ctx context.Context, opts Options, items func(yield func(BatchItem) bool) error, concurrency int, emit func(BatchResult), idle func()) (failed int, err error) {
	concurrency = max(concurrency, 1)
	type job struct {
		item BatchItem
		out  chan BatchResult
	}
	jobs := make(chan job, batchChunk*concurrency)
	order := make(chan chan BatchResult, 4*concurrency*batchChunk)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				chunk := []job{j}
			more:
				for len(chunk) < batchChunk && j.item.Opts == nil {
					select {
					case next, ok := <-jobs:
						if !ok {
							break more
						}
						chunk = append(chunk, next)
						if next.item.Opts != nil {
							break more
						}
					default:
						break more
					}
				}
				rs := make([]BatchResult, len(chunk))
				ps := make([]Payload, len(chunk))
				for k, j := range chunk {
					rs[k] = BatchResult{N: j.item.N, Err: j.item.Err}
					if rs[k].Err != nil {
						continue
					}
					p, err := DecodeLine(j.item.Line)
					switch {
					case err != nil:
						rs[k].Err = err
					case j.item.Opts != nil:
						res, err := e.Enqueue(ctx, p, *j.item.Opts)
						rs[k].ID, rs[k].Duplicate, rs[k].Err = res.ID, res.Duplicate, err
					default:
						ps[k] = p
					}
				}
				res, errs := e.enqueueChunk(ctx, ps, opts)
				for k, j := range chunk {
					if ps[k] != nil {
						rs[k].ID, rs[k].Duplicate, rs[k].Err = res[k].ID, res[k].Duplicate, errs[k]
					}
					j.out <- rs[k]
				}
			}
		}()
	}
	var readErr error
	go func() {
		defer close(order)
		defer close(jobs)
		readErr = items(func(it BatchItem) bool {
			out := make(chan BatchResult, 1)
			select {
			case order <- out:
			case <-ctx.Done():
				return false
			}
			jobs <- job{item: it, out: out}
			return true
		})
		if readErr == nil && ctx.Err() != nil {
			readErr = ctx.Err()
		}
	}()
	var nFailed atomic.Int64
	for out := range order {
		var r BatchResult
		select {
		case r = <-out:
		default:
			if idle != nil {
				idle()
			}
			r = <-out
		}
		if r.Err != nil {
			nFailed.Add(1)
		}
		emit(r)
	}
	wg.Wait()
	if readErr != nil {
		return int(nFailed.Load()), fmt.Errorf("reading input: %w", readErr)
	}
	return int(nFailed.Load()), nil
}

// MaxLineBytes bounds one batch line: twice MaxPayloadBytes, so any valid
// task fits however its JSON is spaced or escaped, while a runaway line is
// skipped without being held in memory.
const MaxLineBytes = 2 * MaxPayloadBytes

// Lines yields the lines of in as batch items (JSON Lines, the input of
// `enqueue batch` and of application/x-ndjson batches). A line longer than
// MaxLineBytes is read to its end and yielded as an item error. A final
// empty line (the input's trailing newline) is not an item.
func Lines(in io.Reader) func(yield func(BatchItem) bool) error {
	return func(yield func(BatchItem) bool) error {
		br := bufio.NewReaderSize(in, 64<<10)
		for n := 1; ; n++ {
			line, size, err := readLine(br, MaxLineBytes)
			if size == 0 && err == io.EOF {
				return nil
			}
			it := BatchItem{N: n, Line: line}
			if line == nil {
				it.Err = fmt.Errorf("longer than %d bytes (%d): one task a line", MaxLineBytes, size)
			}
			if !yield(it) {
				return nil
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
}

// readLine reads one line (its newline included) and returns it with its
// size in bytes; a line longer than max, not counting its line ending, is
// read to its end but dropped (nil line).
func readLine(br *bufio.Reader, max int) (line []byte, size int, err error) {
	dropped := false
	for {
		frag, err := br.ReadSlice('\n')
		size += len(frag)
		if !dropped {
			line = append(line, frag...)
			if len(bytes.TrimRight(line, "\r\n")) > max {
				line, dropped = nil, true
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if dropped {
			return nil, size, err
		}
		if line == nil {
			line = []byte{}
		}
		return line, size, err
	}
}

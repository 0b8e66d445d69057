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

// EnqueueBatch decodes and enqueues every item that items yields, with up
// to concurrency requests in flight, and hands results to emit in input
// order as soon as each is known. Valid items are enqueued even when others
// are bad. It is the engine of `enqueue batch` and of the HTTP API's
// POST /v1/resends:batch, so that both apply one rule set. items returns
// the error that stopped reading, if any; EnqueueBatch returns it wrapped.
func (e *Enqueuer) EnqueueBatch(ctx context.Context, opts Options, items func(yield func(BatchItem) bool) error, concurrency int, emit func(BatchResult)) (failed int, err error) {
	concurrency = max(concurrency, 1)
	type job struct {
		item BatchItem
		out  chan BatchResult
	}
	jobs := make(chan job)
	order := make(chan chan BatchResult, 4*concurrency)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				r := BatchResult{N: j.item.N, Err: j.item.Err}
				if r.Err == nil {
					p, err := DecodeLine(j.item.Line)
					if err == nil {
						o := opts
						if j.item.Opts != nil {
							o = *j.item.Opts
						}
						var res Enqueued
						res, err = e.Enqueue(ctx, p, o)
						r.ID, r.Duplicate = res.ID, res.Duplicate
					}
					r.Err = err
				}
				j.out <- r
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
		r := <-out
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

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/certmail/certmail/internal/tasks"
)

func runBatch(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv env) error {
	var (
		c           common
		concurrency int
	)
	fs := newFlagSet("enqueue batch", `Usage: enqueue batch [FILE|-] [flags]

Reads JSON Lines from FILE (or stdin when FILE is - or absent), one task a line:
  {"provider":"opensrs","order_id":"1799","reference":"optional"}
  {"provider":"digicert","order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en"}
Prints one line per input line, in order: the task ID, or "line N: <error>".
Valid lines are enqueued even when others are bad; exits 1 if any line failed.
A line longer than 128 KiB is skipped.

Flags:
`)
	c.register(fs, getenv)
	c.registerTask(fs)
	fs.IntVar(&concurrency, "concurrency", 32, "requests in flight to Redis")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("expected at most one FILE, got %d arguments", len(pos))
	}
	if concurrency < 1 {
		return usagef("--concurrency: must be at least 1")
	}
	if err := c.options().Validate(); err != nil {
		return flagErr(err, nil)
	}
	in := stdin
	if len(pos) == 1 && pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return usagef("FILE: %v", err)
		}
		defer f.Close()
		in = f
	}
	rdb, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()

	var bar *progressbar.ProgressBar
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("enqueued"), progressbar.OptionShowCount(),
			progressbar.OptionShowIts(), progressbar.OptionClearOnFinish())
	}
	// Output is buffered, and flushed whenever the next result is not
	// ready yet: one write per burst, not one per line, while a slow input
	// still sees each answer at once. Stderr is written after stdout is
	// flushed, so the two keep their order on a terminal.
	out := bufio.NewWriterSize(stdout, 64<<10)
	failed, err := batch(ctx, enq, c.options(), in, concurrency, func(r lineResult) {
		if bar != nil {
			_ = bar.Add(1)
		}
		if r.err != nil {
			fmt.Fprintf(out, "line %d: %s\n", r.n, oneLine(r.err.Error()))
			return
		}
		fmt.Fprintln(out, r.id)
		if r.dup {
			_ = out.Flush()
			fmt.Fprintf(stderr, "line %d: duplicate of %s\n", r.n, r.id)
		}
	}, func() { _ = out.Flush() })
	if ferr := out.Flush(); ferr != nil && err == nil {
		err = ferr
	}
	if bar != nil {
		_ = bar.Finish()
	}
	if err != nil {
		return err
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "enqueue batch: %d line(s) failed\n", failed)
		return errSilent
	}
	return nil
}

type lineResult struct {
	n   int
	id  string
	dup bool
	err error
}

// batchChunk is the most lines one request to Redis carries the dedup
// marks of (tasks.Enqueuer.EnqueueBatch): lines already read are enqueued
// together, so a file goes in chunks while a slow pipe still goes line by
// line.
const batchChunk = 32

// batch enqueues every line of in with up to concurrency requests in flight
// and hands results to emit in input order as soon as each is known. Lines
// are taken in chunks of what is already read (at most batchChunk), whose
// dedup marks are set in one round trip. idle, if not nil, is called before
// waiting for a result that is not there yet (runBatch flushes its output).
func batch(ctx context.Context, enq *tasks.Enqueuer, opts tasks.Options, in io.Reader, concurrency int, emit func(lineResult), idle func()) (failed int, err error) {
	type job struct {
		n    int
		line []byte
		err  error // the line could not be read whole
		out  chan lineResult
	}
	jobs := make(chan []job)
	order := make(chan chan lineResult, 4*concurrency*batchChunk)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for chunk := range jobs {
				rs := make([]lineResult, len(chunk))
				ps := make([]tasks.Payload, len(chunk))
				for k, j := range chunk {
					rs[k] = lineResult{n: j.n, err: j.err}
					if j.err == nil {
						ps[k], rs[k].err = tasks.DecodeLine(j.line)
					}
				}
				res, errs := enq.EnqueueBatch(ctx, ps, opts)
				for k, j := range chunk {
					if ps[k] != nil {
						rs[k].id, rs[k].dup, rs[k].err = res[k].ID, res[k].Duplicate, enqueueErr(errs[k])
					}
					j.out <- rs[k]
				}
			}
		})
	}
	var readErr error
	go func() {
		defer close(order)
		defer close(jobs)
		br := bufio.NewReaderSize(in, 64<<10)
		var chunk []job
		flush := func() {
			if len(chunk) > 0 {
				jobs <- chunk
				chunk = nil
			}
		}
		defer flush()
		for n := 1; ; n++ {
			line, size, err := readLine(br, maxLineBytes)
			if size == 0 && err == io.EOF {
				return
			}
			var lineErr error
			if line == nil {
				lineErr = fmt.Errorf("longer than %d bytes (%d): one task a line", maxLineBytes, size)
			}
			out := make(chan lineResult, 1)
			select {
			case order <- out:
			case <-ctx.Done():
				readErr = ctx.Err()
				return
			}
			chunk = append(chunk, job{n: n, line: line, err: lineErr, out: out})
			if len(chunk) == batchChunk || br.Buffered() == 0 {
				flush()
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	var nFailed atomic.Int64
	for out := range order {
		var r lineResult
		select {
		case r = <-out:
		default:
			if idle != nil {
				idle()
			}
			r = <-out
		}
		if r.err != nil {
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

// maxLineBytes bounds one input line: twice tasks.MaxPayloadBytes, so any
// valid task fits however its JSON is spaced or escaped, while a runaway
// line is skipped without being held in memory.
const maxLineBytes = 2 * tasks.MaxPayloadBytes

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

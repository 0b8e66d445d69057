package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

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

// batch enqueues every line of in with up to concurrency requests in flight
// and hands results to emit in input order as soon as each is known. The
// engine and the line reader are internal/tasks' (shared with the HTTP API).
// idle, if not nil, is called before waiting for a result that is not there
// yet (runBatch flushes its output).
func batch(ctx context.Context, enq *tasks.Enqueuer, opts tasks.Options, in io.Reader, concurrency int, emit func(lineResult), idle func()) (failed int, err error) {
	return enq.EnqueueBatch(ctx, opts, tasks.Lines(in), concurrency, func(r tasks.BatchResult) {
		emit(lineResult{n: r.N, id: r.ID, dup: r.Duplicate, err: enqueueErr(r.Err)})
	}, idle)
}

// maxLineBytes bounds one input line (tasks.MaxLineBytes).
const maxLineBytes = tasks.MaxLineBytes

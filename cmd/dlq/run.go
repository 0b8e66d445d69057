package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/certmail/certmail/internal/cli"
	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/redisconn"
)

// Exit codes, part of the CLI contract (see internal/cli).
const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure
	exitUsage   = cli.ExitUsage
)

// pingTimeout bounds the first contact with Redis.
const pingTimeout = 5 * time.Second

const topUsage = `Usage: dlq COMMAND [flags]

Inspect, replay and delete certmail's dead letters (resend tasks that failed
for good). Every command first records any task found in asynq's archive
without a dead-letter record (worker crash), so nothing asynq trims is lost.

Commands:
  list    [--provider P] [--since D] [--error-contains S] [--json]
          every matching dead letter, oldest first (never capped)
  show    ID [--json]
          one dead letter with its attempt history and asynq state
  replay  (ID... | --all) [--provider P] [--since D] [--error-contains S] [--dry-run]
          enqueue each again with a fresh retry budget; prints "OLD_ID NEW_ID"
  delete  (ID... | --all) [--provider P] [--since D] [--error-contains S]
          delete records and archived tasks; prints the deleted IDs

Flags of every command:
  --redis-url URL   Redis URL (env REDIS_URL, default redis://127.0.0.1:6379/0);
                    rediss:// for TLS, redis-sentinel://h:p,…[/db]?master=NAME,
                    redis-cluster://h:p,…; the password is never printed

Flags may come after the IDs. Run 'dlq COMMAND --help' for details.
Exit codes: 0 ok, 1 runtime failure or not found, 2 invalid usage.
`

const listUsage = `Usage: dlq list [--provider opensrs|digicert] [--since D] [--error-contains S] [--json]

Lists every dead letter that matches, oldest death first. Nothing is capped or
paged. Without --json: a table, one line per dead letter under a header line.
With --json: an array (possibly []) of objects with id, type, queue, provider,
order_id, reference, payload (the task payload as JSON), retried, max_retry,
last_error, last_failed_at (RFC 3339), class and source.

Flags:
`

const showUsage = `Usage: dlq show ID [--json]

Shows one dead letter, its asynq state if asynq still holds the task
("archived" normally, null/absent once trimmed) and every recorded attempt.
With --json: the list object plus "asynq_state" and "attempts" (an array).

Flags:
`

const replayUsage = `Usage: dlq replay (ID... | --all) [--provider P] [--since D] [--error-contains S] [--dry-run]

Enqueues each dead letter again as a new task with a fresh retry budget: same
type, payload and max_retry, the archived task's timeout (default 60s once
asynq no longer holds it), no dedup window. The archived task and the record
are deleted. Prints one line per replayed task: "OLD_ID NEW_ID".
With --dry-run nothing changes, the lines read "OLD_ID -" and the refusals
below are reported as a real replay would report them.

Refused, with a message on stderr (exit 1, the others still replayed): an
unknown ID; a dead letter whose asynq task is live again (e.g. pending after
Run in the dashboard); a payload that no longer validates (record kept).

Each dead letter is replayed exactly once however many replays and deletes
run at once: one that another operator replayed, deleted or is handling is
skipped with "dlq replay: ID: skipped: <why>" on stderr and no stdout line
(exit 0: it was handled). A replay interrupted by a crash is finished by the
next replay (after at most a minute), without a second task.

Flags:
`

const deleteUsage = `Usage: dlq delete (ID... | --all) [--provider P] [--since D] [--error-contains S]

Deletes dead-letter records and their archived asynq tasks (attempt histories
expire with the retention window). Prints the deleted IDs, one per line.
A dead letter whose asynq task is live again is not deleted (exit 1). One that
another operator replayed, deleted or is handling is skipped with
"dlq delete: ID: skipped: <why>" on stderr (exit 0: it was handled).

Flags:
`

// env reads configuration from the environment; tests pass their own.
type env func(string) string

var (
	usagef    = cli.Usagef
	errHelp   = cli.ErrHelp
	errSilent = cli.ErrSilent
	oneLine   = cli.OneLine
	parse     = cli.Parse
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	// go-redis logs dial retries to os.Stderr; dlq reports Redis failures
	// itself, as one line.
	redisconn.SetLogger(nil) // go-redis pool chatter would break the one-line error rule
	if len(args) == 0 {
		fmt.Fprintln(stderr, "dlq: missing command (want list, show, replay or delete; see dlq --help)")
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, topUsage)
		return exitOK
	case "list":
		err = runList(ctx, rest, stdout, stderr, getenv)
	case "show":
		err = runShow(ctx, rest, stdout, stderr, getenv)
	case "replay":
		err = runReplay(ctx, rest, stdout, stderr, getenv)
	case "delete":
		err = runDelete(ctx, rest, stdout, stderr, getenv)
	default:
		fmt.Fprintf(stderr, "dlq: unknown command %q (want list, show, replay or delete; see dlq --help)\n", cmd)
		return exitUsage
	}
	return cli.Report(stderr, "dlq "+cmd, err)
}

// opts are the flags of all commands; each command registers its own.
type opts struct {
	redisURL      string
	provider      string
	since         string
	errorContains string
	json          bool
	all           bool
	dryRun        bool
}

func newFlagSet(name, usage string, o *opts, getenv env) *flag.FlagSet {
	fs := cli.NewFlagSet(name, usage)
	cli.RedisURLFlag(fs, &o.redisURL, getenv)
	return fs
}

func (o *opts) registerFilters(fs *flag.FlagSet) {
	fs.StringVar(&o.provider, "provider", "", "only dead letters of this provider: opensrs or digicert")
	fs.StringVar(&o.since, "since", "", "only dead letters that last failed within this duration, like 90m, 24h or 7d")
	fs.StringVar(&o.errorContains, "error-contains", "", "only dead letters whose last error contains this text (any case)")
}

// filter validates the filter flags.
func (o *opts) filter(ids []string) (deadletter.Filter, error) {
	f := deadletter.Filter{Provider: o.provider, ErrorContains: o.errorContains, IDs: ids}
	if err := f.Validate(); err != nil { // its messages start with the field name
		return f, usagef("--%v", err)
	}
	if o.since != "" {
		d, err := parseSince(o.since)
		if err != nil {
			return f, usagef("--since: %v", err)
		}
		f.Since = d
	}
	return f, nil
}

// parseSince accepts Go durations and whole days ("7d").
func parseSince(s string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 90m, 24h or 7d)", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 90m, 24h or 7d)", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("must be a positive duration, got %q", s)
	}
	return d, nil
}

// open connects to Redis (exit 2 for a malformed URL, 1 when unreachable),
// and reconciles asynq's archive into the dead-letter store.
func open(ctx context.Context, o *opts, stderr io.Writer) (*deadletter.Service, func(), error) {
	if _, err := redisconn.Parse(o.redisURL); err != nil {
		return nil, nil, usagef("--redis-url: %v", err)
	}
	rdb, err := redisconn.Connect(ctx, o.redisURL, pingTimeout)
	if err != nil {
		return nil, nil, err
	}
	svc := deadletter.New(rdb, outcome.NewStore(rdb, 0))
	closeAll := func() {
		_ = svc.Close()
		_ = rdb.Close()
	}
	n, err := svc.Reconcile(ctx)
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("reconcile with asynq's archive: %w", err)
	}
	if n > 0 {
		fmt.Fprintf(stderr, "dlq: recorded %d dead letter(s) found only in asynq's archive (reconciled)\n", n)
	}
	return svc, closeAll, nil
}

func runList(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	var o opts
	fs := newFlagSet("dlq list", listUsage, &o, getenv)
	o.registerFilters(fs)
	fs.BoolVar(&o.json, "json", false, "print a JSON array instead of a table")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (list takes no IDs; see dlq show)", pos[0])
	}
	f, err := o.filter(nil)
	if err != nil {
		return err
	}
	svc, closeAll, err := open(ctx, &o, stderr)
	if err != nil {
		return err
	}
	defer closeAll()
	dls, err := svc.List(ctx, f)
	if err != nil {
		return err
	}
	if o.json {
		out := make([]deadletter.View, len(dls))
		for i, d := range dls {
			out[i] = deadletter.NewView(d)
		}
		return writeJSON(stdout, out)
	}
	return writeTable(stdout, dls)
}

func runShow(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	var o opts
	fs := newFlagSet("dlq show", showUsage, &o, getenv)
	fs.BoolVar(&o.json, "json", false, "print a JSON object")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one task ID, got %d (see dlq show --help)", len(pos))
	}
	svc, closeAll, err := open(ctx, &o, stderr)
	if err != nil {
		return err
	}
	defer closeAll()
	d, err := svc.Show(ctx, pos[0])
	if err != nil {
		return err
	}
	if o.json {
		return writeJSON(stdout, d.View())
	}
	return writeDetail(stdout, d)
}

// targets checks the (ID... | --all) rule of replay and delete.
func targets(o *opts, pos []string, cmd string) error {
	switch {
	case len(pos) == 0 && !o.all:
		return usagef("give task IDs or --all (see dlq %s --help)", cmd)
	case len(pos) > 0 && o.all:
		return usagef("--all: give task IDs or --all, not both")
	}
	return nil
}

// openTargets parses the flags of replay and delete, checks the
// (ID... | --all) rule and the filters, and opens the service.
func openTargets(ctx context.Context, cmd, usage string, args []string, stdout, stderr io.Writer, getenv env,
	extra func(*flag.FlagSet, *opts)) (*opts, deadletter.Filter, *deadletter.Service, func(), error) {
	var o opts
	fs := newFlagSet("dlq "+cmd, usage, &o, getenv)
	o.registerFilters(fs)
	extra(fs, &o)
	pos, err := parse(fs, args, stdout)
	if err == nil {
		err = targets(&o, pos, cmd)
	}
	if err != nil {
		return nil, deadletter.Filter{}, nil, nil, err
	}
	f, err := o.filter(pos)
	if err != nil {
		return nil, f, nil, nil, err
	}
	svc, closeAll, err := open(ctx, &o, stderr)
	return &o, f, svc, closeAll, err
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	o, f, svc, closeAll, err := openTargets(ctx, "replay", replayUsage, args, stdout, stderr, getenv, func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.all, "all", false, "replay every dead letter that matches the filters")
		fs.BoolVar(&o.dryRun, "dry-run", false, `print what would be replayed ("OLD_ID -") and change nothing`)
	})
	if err != nil {
		return err
	}
	defer closeAll()
	res, err := svc.Replay(ctx, f, o.dryRun)
	if err != nil {
		return err
	}
	failed := false
	for _, r := range res {
		switch {
		case r.Err == nil && o.dryRun:
			fmt.Fprintf(stdout, "%s -\n", r.OldID)
		case r.NewID != "":
			fmt.Fprintf(stdout, "%s %s\n", r.OldID, r.NewID)
		}
		if r.Err != nil {
			// Skipped: another operator handled it, once; not a failure.
			failed = failed || !errors.Is(r.Err, deadletter.ErrSkipped)
			fmt.Fprintf(stderr, "dlq replay: %s\n", oneLine(r.Err.Error()))
		}
	}
	if len(res) == 0 {
		fmt.Fprintln(stderr, "dlq replay: no dead letters match")
	}
	if failed {
		return errSilent
	}
	return nil
}

func runDelete(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	_, f, svc, closeAll, err := openTargets(ctx, "delete", deleteUsage, args, stdout, stderr, getenv, func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.all, "all", false, "delete every dead letter that matches the filters")
	})
	if err != nil {
		return err
	}
	defer closeAll()
	ids, err := svc.Delete(ctx, f)
	for _, id := range ids {
		fmt.Fprintln(stdout, id)
	}
	if err != nil {
		failed := false
		for _, e := range unjoin(err) {
			failed = failed || !errors.Is(e, deadletter.ErrSkipped)
			fmt.Fprintf(stderr, "dlq delete: %s\n", oneLine(e.Error()))
		}
		if failed {
			return errSilent
		}
		return nil
	}
	if len(ids) == 0 {
		fmt.Fprintln(stderr, "dlq delete: no dead letters match")
	}
	return nil
}

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// writeJSON prints v with email addresses masked in every string (see
// maskJSON).
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return maskJSON(w, b)
}

// Human output masks email addresses: it ends up on shared screens. Every
// line goes through redact.Writer (before the tabwriter, so that columns
// stay aligned), whatever field it comes from.

func writeTable(w io.Writer, dls []outcome.DeadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	mw := redact.NewWriter(tw)
	fmt.Fprintln(mw, "ID\tTYPE\tORDER\tRETRIED\tLAST FAILED\tCLASS\tLAST ERROR")
	for _, d := range dls {
		fmt.Fprintf(mw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", d.ID, d.Type, cell(d.OrderID), d.Retried, d.MaxRetry,
			d.LastFailedAt.UTC().Format(time.RFC3339), cell(d.Class), cell(d.LastError))
	}
	if err := mw.Flush(); err != nil {
		return err
	}
	return tw.Flush()
}

// cell keeps a table cell on one line and never empty.
func cell(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\t", " ")), " ")
	if s == "" {
		return "-"
	}
	return s
}

func writeDetail(w io.Writer, d deadletter.Detail) error {
	state := d.State
	if state == "" {
		state = "(no longer in asynq)"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	mw := redact.NewWriter(tw)
	for _, kv := range [][2]string{
		{"id", d.ID}, {"type", d.Type}, {"queue", d.Queue}, {"provider", d.Provider},
		{"order_id", cell(d.OrderID)}, {"reference", cell(d.Reference)},
		{"retried", fmt.Sprintf("%d of max %d", d.Retried, d.MaxRetry)},
		{"last_failed_at", d.LastFailedAt.UTC().Format(time.RFC3339)},
		{"class", cell(d.Class)}, {"source", cell(d.Source)},
		{"last_error", cell(d.LastError)},
		{"asynq_state", state},
		{"payload", cell(string(redact.JSON(d.Payload)))},
	} {
		fmt.Fprintf(mw, "%s:\t%s\n", kv[0], kv[1])
	}
	if err := mw.Flush(); err != nil {
		return err
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nattempts (%d):\n", len(d.Attempts))
	if len(d.Attempts) == 0 {
		fmt.Fprintln(w, "  none recorded (the task died outside the handler, e.g. a worker crash)")
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	mw = redact.NewWriter(tw)
	fmt.Fprintln(mw, "  #\tAT\tOUTCOME\tCLASS\tHTTP\tDURATION\tERROR")
	for _, a := range d.Attempts {
		httpStatus := "-"
		if a.HTTPStatus != 0 {
			httpStatus = strconv.Itoa(a.HTTPStatus)
		}
		msg := a.Error
		if msg == "" {
			msg = a.ProviderMessage
		}
		fmt.Fprintf(mw, "  %d\t%s\t%s\t%s\t%s\t%.0fms\t%s\n", a.Attempt, a.At.UTC().Format(time.RFC3339), a.Outcome,
			cell(a.Class), httpStatus, a.DurationMS, cell(msg))
	}
	if err := mw.Flush(); err != nil {
		return err
	}
	return tw.Flush()
}

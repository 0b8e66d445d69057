package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/cli"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

// Exit codes, part of the CLI contract (see internal/cli).
const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure
	exitUsage   = cli.ExitUsage
)

// topUsage is the top-level help; the task commands come from the task-type
// table (tasks.Commands).
func topUsage() string {
	var b strings.Builder
	b.WriteString(`Usage: enqueue COMMAND [flags]

Enqueue "resend the certificate email" tasks for the certmail worker.

Commands:
`)
	for _, c := range tasks.Commands() {
		fmt.Fprintf(&b, "  %-9s %s\n            %s\n", c.Command, c.Synopsis, c.Summary)
	}
	b.WriteString(`  batch     [FILE|-]   JSON Lines, one task a line, from FILE or stdin
  status    TASK_ID [--json]   state, result and every attempt of a task

Run 'enqueue COMMAND --help' for the flags of a command.
Exit codes: 0 ok, 1 runtime failure (including "may have been enqueued as ID":
retrying is safe, 'enqueue status ID' tells), 2 invalid usage or input.
`)
	return b.String()
}

// commandList names every command, for "want ..." in usage errors.
func commandList() string {
	var names []string
	for _, c := range tasks.Commands() {
		names = append(names, c.Command)
	}
	return tasks.OrList(append(names, "batch", "status"))
}

// env reads configuration from the environment; tests pass their own.
type env func(string) string

var (
	usagef    = cli.Usagef
	errHelp   = cli.ErrHelp
	errSilent = cli.ErrSilent
	oneLine   = cli.OneLine
	parse     = cli.Parse
)

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv env) int {
	redisconn.SetLogger(nil)
	if len(args) == 0 {
		fmt.Fprintf(stderr, "enqueue: missing command (want %s; see enqueue --help)\n", commandList())
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, topUsage())
		return exitOK
	case "batch":
		err = runBatch(ctx, rest, stdin, stdout, stderr, getenv)
	case "status":
		err = runStatus(ctx, rest, stdout, stderr, getenv)
	default:
		c, ok := tasks.CommandNamed(cmd)
		if !ok {
			fmt.Fprintf(stderr, "enqueue: unknown command %q (want %s; see enqueue --help)\n", cmd, commandList())
			return exitUsage
		}
		err = runSingle(ctx, c, rest, stdout, stderr, getenv)
	}
	return report(stderr, "enqueue "+cmd, err)
}

// report is cli.Report, with payload validation errors as usage errors.
func report(stderr io.Writer, prefix string, err error) int {
	var fe *tasks.FieldError
	if errors.As(err, &fe) {
		err = cli.Usagef("%s", fe.Error())
	}
	return cli.Report(stderr, prefix, err)
}

// common holds the flags every command shares.
type common struct {
	redisURL    string
	maxRetry    int
	timeout     time.Duration
	delay       time.Duration
	dedupWindow time.Duration
	retention   time.Duration
}

func (c *common) register(fs *flag.FlagSet, getenv env) {
	cli.RedisURLFlag(fs, &c.redisURL, getenv)
}

func (c *common) registerTask(fs *flag.FlagSet) {
	d := tasks.DefaultOptions()
	fs.IntVar(&c.maxRetry, "max-retry", d.MaxRetry, "retries after the first attempt before the task is dead-lettered")
	fs.DurationVar(&c.timeout, "timeout", d.Timeout, "time limit of one attempt (whole seconds, at least 1s)")
	fs.DurationVar(&c.delay, "delay", 0, "process the task after this delay (whole seconds)")
	fs.DurationVar(&c.dedupWindow, "dedup-window", d.DedupWindow, "an identical request inside this window returns the first task (0 turns it off; whole ms, at least 1s)")
	fs.DurationVar(&c.retention, "retention", d.Retention, "how long a completed task and its result stay readable (whole seconds, at least --dedup-window)")
}

func (c *common) options() tasks.Options {
	return tasks.Options{MaxRetry: c.maxRetry, Timeout: c.timeout, Delay: c.delay, Retention: c.retention, DedupWindow: c.dedupWindow}
}

func (c *common) connect(ctx context.Context) (redis.UniversalClient, error) {
	if _, err := redisconn.Parse(c.redisURL); err != nil {
		return nil, usagef("--redis-url: %v", err)
	}
	return redisconn.Connect(ctx, c.redisURL, 5*time.Second)
}

func newFlagSet(name, usage string) *flag.FlagSet { return cli.NewFlagSet(name, usage) }

// runSingle enqueues one task with a task command's flags.
func runSingle(ctx context.Context, cmd *tasks.CLI, args []string, stdout, stderr io.Writer, getenv env) error {
	var c common
	fs := newFlagSet("enqueue "+cmd.Command, "Usage: enqueue "+cmd.Command+" "+cmd.Synopsis+" [flags]\n\nFlags:\n")
	c.register(fs, getenv)
	c.registerTask(fs)
	build := cmd.Flags(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (see --help)", pos[0])
	}
	p := build()
	if err := p.Validate(); err != nil {
		return flagErr(err, cmd.FlagNames)
	}
	if err := c.options().Validate(); err != nil {
		return flagErr(err, nil)
	}
	rdb, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	enq := tasks.NewEnqueuer(rdb)
	defer enq.Close()
	res, err := enq.Enqueue(ctx, p, c.options())
	if err != nil {
		return enqueueErr(err)
	}
	fmt.Fprintln(stdout, res.ID)
	if res.Duplicate {
		fmt.Fprintf(stderr, "duplicate of %s\n", res.ID)
	}
	return nil
}

// enqueueErr tells the caller how to find out when a task may or may not
// exist: retrying is safe (the dedup mark makes it answer for the same
// task), but only `enqueue status` says what happened.
func enqueueErr(err error) error {
	var ue *tasks.UncertainError
	if errors.As(err, &ue) {
		return fmt.Errorf("may have been enqueued as %s: check `enqueue status %s`", ue.ID, ue.ID)
	}
	return err
}

// flagErr renames payload fields to the flags that set them: a field is
// set by the flag of its name with hyphens, unless names maps it (or the
// prefix of a nested field) to another flag.
func flagErr(err error, names map[string]string) error {
	var fe *tasks.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	name := fe.Field
	switch {
	case name == "payload", strings.HasPrefix(name, "--"):
		// "payload" is the encoded request as a whole, all flags together.
	case flagFor(names, name) != "":
		name = flagFor(names, name) + " (" + name + ")"
	default:
		name = "--" + strings.ReplaceAll(name, "_", "-")
	}
	return usagef("%s: %s", name, fe.Reason)
}

// flagFor is the flag names gives for field or for the field it is part of.
func flagFor(names map[string]string, field string) string {
	for f, flag := range names {
		if field == f || strings.HasPrefix(field, f+".") || strings.HasPrefix(field, f+"[") {
			return flag
		}
	}
	return ""
}

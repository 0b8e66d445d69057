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
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

// Exit codes, part of the CLI contract (see internal/cli).
const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure
	exitUsage   = cli.ExitUsage
)

const topUsage = `Usage: enqueue COMMAND [flags]

Enqueue "resend the certificate email" tasks for the certmail worker.

Commands:
  opensrs   --order-id ID [--reference R] [--approve]
            resend an OpenSRS certificate email (or, with --approve, the DCV approver email)
  digicert  --order-id ID [--approval-email DOMAIN=EMAIL]... [--locale L] [--reference R]
            resend DigiCert DCV emails for an order
  batch     [FILE|-]   JSON Lines, one task a line, from FILE or stdin
  status    TASK_ID [--json]   state, result and every attempt of a task

Run 'enqueue COMMAND --help' for the flags of a command.
Exit codes: 0 ok, 1 runtime failure (including "may have been enqueued as ID":
retrying is safe, 'enqueue status ID' tells), 2 invalid usage or input.
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

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv env) int {
	redisconn.SetLogger(nil)
	if len(args) == 0 {
		fmt.Fprintln(stderr, "enqueue: missing command (want opensrs, digicert, batch or status; see enqueue --help)")
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, topUsage)
		return exitOK
	case "opensrs", "digicert":
		err = runSingle(ctx, cmd, rest, stdout, stderr, getenv)
	case "batch":
		err = runBatch(ctx, rest, stdin, stdout, stderr, getenv)
	case "status":
		err = runStatus(ctx, rest, stdout, stderr, getenv)
	default:
		fmt.Fprintf(stderr, "enqueue: unknown command %q (want opensrs, digicert, batch or status; see enqueue --help)\n", cmd)
		return exitUsage
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

func (c *common) connect(ctx context.Context) (*redis.Client, error) {
	if _, err := redisconn.Parse(c.redisURL); err != nil {
		return nil, usagef("--redis-url: %v", err)
	}
	return redisconn.Connect(ctx, c.redisURL, 5*time.Second)
}

func newFlagSet(name, usage string) *flag.FlagSet { return cli.NewFlagSet(name, usage) }

// approvalEmails collects repeated --approval-email DOMAIN=EMAIL flags.
type approvalEmails []providers.ApprovalEmail

func (a *approvalEmails) String() string { return "" }

func (a *approvalEmails) Set(v string) error {
	d, e, ok := strings.Cut(v, "=")
	if !ok || d == "" || e == "" {
		return errors.New("must be DOMAIN=EMAIL")
	}
	*a = append(*a, providers.ApprovalEmail{Domain: d, Email: e})
	return nil
}

func runSingle(ctx context.Context, provider string, args []string, stdout, stderr io.Writer, getenv env) error {
	var (
		c         common
		orderID   string
		reference string
		approve   bool
		locale    string
		emails    approvalEmails
	)
	usage := "Usage: enqueue opensrs --order-id ID [--reference R] [--approve] [flags]\n\nFlags:\n"
	if provider == "digicert" {
		usage = "Usage: enqueue digicert --order-id ID [--approval-email DOMAIN=EMAIL]... [--locale L] [--reference R] [flags]\n\nFlags:\n"
	}
	fs := newFlagSet("enqueue "+provider, usage)
	c.register(fs, getenv)
	c.registerTask(fs)
	fs.StringVar(&orderID, "order-id", "", "provider order ID, 1-20 digits (required)")
	fs.StringVar(&reference, "reference", "", "caller's own reference, up to 128 printable characters")
	if provider == "opensrs" {
		fs.BoolVar(&approve, "approve", false, "resend the DCV approver email (opensrs:resend_approve_email) instead of the certificate email")
	} else {
		fs.Var(&emails, "approval-email", "DOMAIN=EMAIL to send the DCV email for DOMAIN to (repeatable)")
		fs.StringVar(&locale, "locale", "", "email language, like en or pt_BR")
	}
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (see --help)", pos[0])
	}
	var p tasks.Payload
	if provider == "opensrs" {
		p = tasks.NewOpenSRSPayload(orderID, reference, approve)
	} else {
		p = &tasks.DigiCertPayload{OrderID: orderID, DomainApprovalEmails: emails, Locale: locale, Reference: reference}
	}
	if err := p.Validate(); err != nil {
		return flagErr(err)
	}
	if err := c.options().Validate(); err != nil {
		return flagErr(err)
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

// flagErr renames payload fields to the flags that set them.
func flagErr(err error) error {
	var fe *tasks.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	name := fe.Field
	switch {
	case name == "order_id":
		name = "--order-id"
	case name == "reference", name == "locale":
		name = "--" + name
	case strings.HasPrefix(name, "domain_approval_emails"):
		name = "--approval-email (" + name + ")"
	case name == "payload":
		// The encoded request as a whole, all flags together.
	case !strings.HasPrefix(name, "--"):
		name = "--" + name
	}
	return usagef("%s: %s", name, fe.Reason)
}

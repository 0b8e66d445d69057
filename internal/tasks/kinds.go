package tasks

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/certmail/certmail/internal/providers"
)

// Kind is one task type as certmail serves it. The table kinds is the only
// list of task types: Decode and Known, the enqueue CLI's commands and batch
// lines, the dead-letter provider filter, Queues and the worker's queue set
// are all read from it. Adding a task type means adding its payload struct
// (with a Type method returning its constant), its entry here, and what its
// provider client needs to serve the providers.Request it builds.
type Kind struct {
	// Type is the wire name of the task type. Never renamed.
	Type string
	// Provider serves the task. Its name is also the task's queue, so that
	// one provider's outage can be paused without touching the others.
	Provider providers.Name
	// Description says in one line what the task makes the provider do.
	Description string
	// New returns a zero payload of the type, to decode into. Its Go type is
	// the payload struct of this kind alone.
	New func() Payload
	// CLI, when set, makes `enqueue CLI.Command` enqueue tasks of this kind.
	// A kind without one is enqueued by a sibling's command (opensrs
	// --approve), by batch lines naming its type, or not from the CLI.
	CLI *CLI
}

// Queue is the asynq queue tasks of the kind go to.
func (k Kind) Queue() string { return string(k.Provider) }

// CLI is the `enqueue` subcommand of a kind. cmd/enqueue adds the flags every
// command shares (Redis, retries, timeout, delay, dedup window, retention);
// everything specific to the task type is here, so cmd/ stays generic.
type CLI struct {
	// Command is the subcommand's name.
	Command string
	// Synopsis shows the command's own flags in usage lines.
	Synopsis string
	// Summary is the line under the synopsis in `enqueue --help`.
	Summary string
	// Flags registers the command's own flags on fs and returns the function
	// that builds the payload from their values once fs is parsed.
	Flags func(fs *flag.FlagSet) (build func() Payload)
	// FlagNames maps a payload field, or the prefix of nested ones, to the
	// flag that sets it, where that flag is not the field's name with
	// hyphens for underscores; errors then name the flag.
	FlagNames map[string]string
}

// kinds is the task-type table. The first kind of a provider is the one a
// batch line naming only that provider gets.
var kinds = []Kind{
	{
		Type:        TypeOpenSRSResendCertEmail,
		Provider:    providers.OpenSRS,
		Description: "resend the certificate (fulfilment) email of an OpenSRS order",
		New:         func() Payload { return &OpenSRSCertEmail{} },
		CLI: &CLI{
			Command:  "opensrs",
			Synopsis: "--order-id ID [--reference R] [--approve]",
			Summary:  "resend an OpenSRS certificate email (or, with --approve, the DCV approver email)",
			Flags:    openSRSFlags,
		},
	},
	{
		Type:        TypeOpenSRSResendApproveEmail,
		Provider:    providers.OpenSRS,
		Description: "resend the DCV approver email of an OpenSRS order (enqueue opensrs --approve)",
		New:         func() Payload { return &OpenSRSApproveEmail{} },
	},
	{
		Type:        TypeDigiCertResendEmails,
		Provider:    providers.DigiCert,
		Description: "resend the DCV emails of a DigiCert order, optionally to chosen approvers",
		New:         func() Payload { return &DigiCertPayload{} },
		CLI: &CLI{
			Command:   "digicert",
			Synopsis:  "--order-id ID [--approval-email DOMAIN=EMAIL]... [--locale L] [--reference R]",
			Summary:   "resend DigiCert DCV emails for an order",
			Flags:     digiCertFlags,
			FlagNames: map[string]string{"domain_approval_emails": "--approval-email"},
		},
	},
}

// Kinds returns the task-type table, in order.
func Kinds() []Kind { return slices.Clone(kinds) }

// KindOf returns the kind of a task type.
func KindOf(taskType string) (Kind, bool) {
	for _, k := range kinds {
		if k.Type == taskType {
			return k, true
		}
	}
	return Kind{}, false
}

// Queues lists every queue certmail uses, in table order.
var Queues = queues()

func queues() []string {
	var qs []string
	for _, k := range kinds {
		if !slices.Contains(qs, k.Queue()) {
			qs = append(qs, k.Queue())
		}
	}
	return qs
}

// Providers lists the providers that serve some task type, in table order.
func Providers() []providers.Name {
	var ps []providers.Name
	for _, k := range kinds {
		if !slices.Contains(ps, k.Provider) {
			ps = append(ps, k.Provider)
		}
	}
	return ps
}

// CheckProvider returns an error starting with "provider: " unless name is a
// provider of some task type.
func CheckProvider(name string) error {
	if name == "" {
		return errors.New("provider: is required (" + providerList() + ")")
	}
	if !slices.Contains(Providers(), providers.Name(name)) {
		return fmt.Errorf("provider: must be %s, got %q", providerList(), name)
	}
	return nil
}

// QueuesFor is the asynq queue set of a worker with these resenders: the
// queue of every kind whose provider it can call. Tasks of other providers
// stay in their queues for a worker that can.
func QueuesFor(resenders map[providers.Name]providers.Resender) map[string]int {
	qs := map[string]int{}
	for _, k := range kinds {
		if resenders[k.Provider] != nil {
			qs[k.Queue()] = 1
		}
	}
	return qs
}

// Commands returns the CLI of every kind that has one, in table order.
func Commands() []*CLI {
	var cs []*CLI
	for _, k := range kinds {
		if k.CLI != nil {
			cs = append(cs, k.CLI)
		}
	}
	return cs
}

// CommandNamed returns the CLI whose Command is name.
func CommandNamed(name string) (*CLI, bool) {
	for _, c := range Commands() {
		if c.Command == name {
			return c, true
		}
	}
	return nil, false
}

func providerList() string {
	var names []string
	for _, p := range Providers() {
		names = append(names, string(p))
	}
	return OrList(names)
}

// OrList joins words as "a, b or c", for messages that list the choices.
func OrList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// orderFlags registers the flags every task type's command has.
func orderFlags(fs *flag.FlagSet) (orderID, reference *string) {
	orderID = fs.String("order-id", "", "provider order ID, 1-20 digits (required)")
	reference = fs.String("reference", "", "caller's own reference, up to 128 printable characters")
	return orderID, reference
}

func openSRSFlags(fs *flag.FlagSet) func() Payload {
	orderID, reference := orderFlags(fs)
	approve := fs.Bool("approve", false, "resend the DCV approver email ("+TypeOpenSRSResendApproveEmail+") instead of the certificate email")
	return func() Payload { return NewOpenSRSPayload(*orderID, *reference, *approve) }
}

func digiCertFlags(fs *flag.FlagSet) func() Payload {
	orderID, reference := orderFlags(fs)
	var emails approvalEmails
	fs.Var(&emails, "approval-email", "DOMAIN=EMAIL to send the DCV email for DOMAIN to (repeatable)")
	locale := fs.String("locale", "", "email language, like en or pt_BR")
	return func() Payload {
		return &DigiCertPayload{OrderID: *orderID, DomainApprovalEmails: emails, Locale: *locale, Reference: *reference}
	}
}

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

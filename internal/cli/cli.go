// Package cli holds the conventions every certmail command shares, so that
// scripts can rely on them: exit codes, one-line error messages that name
// the flag or field at fault, --help on stdout, and flags accepted before or
// after positional arguments.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/certmail/certmail/internal/redisconn"
)

// Exit codes, part of every command's contract.
const (
	ExitOK      = 0
	ExitFailure = 1 // runtime failure: Redis unreachable, not found, a line failed
	ExitUsage   = 2 // invalid usage or input; nothing was changed
)

// UsageError is reported as one line and exit code 2.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error { return UsageError{fmt.Sprintf(format, args...)} }

var (
	// ErrHelp marks a --help request that was already answered (exit 0).
	ErrHelp = errors.New("help shown")
	// ErrSilent is a failure whose details were already printed (exit 1).
	ErrSilent = errors.New("failed")
)

// Report prints err as one line prefixed with the command name and returns
// the exit code.
func Report(stderr io.Writer, prefix string, err error) int {
	var ue UsageError
	switch {
	case err == nil, errors.Is(err, ErrHelp):
		return ExitOK
	case errors.Is(err, ErrSilent):
		return ExitFailure
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %s\n", prefix, OneLine(ue.Msg))
		return ExitUsage
	default:
		fmt.Fprintf(stderr, "%s: %s\n", prefix, OneLine(err.Error()))
		return ExitFailure
	}
}

// OneLine folds any whitespace, newlines included, into single spaces.
func OneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// NewFlagSet returns a flag set whose --help prints usage then the flags.
func NewFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs
}

// RedisURLFlag registers --redis-url with REDIS_URL as its default.
func RedisURLFlag(fs *flag.FlagSet, p *string, getenv func(string) string) {
	def := getenv("REDIS_URL")
	if def == "" {
		def = redisconn.DefaultURL
	}
	fs.StringVar(p, "redis-url", def, "Redis URL (env REDIS_URL): redis://, rediss:// (TLS), redis-sentinel://h:p,…/db?master=NAME or redis-cluster://h:p,…; the password is never printed")
}

// Parse parses flags that may come before or after positional arguments
// (the flag package alone stops at the first positional) and returns the
// positionals; everything after "--" is positional. --help prints usage on
// stdout and returns ErrHelp; any other problem is a one-line UsageError.
func Parse(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(stdout)
				fs.Usage()
				return nil, ErrHelp
			}
			return nil, Usagef("%v (see %s --help)", err, fs.Name())
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

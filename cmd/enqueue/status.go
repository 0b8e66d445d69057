package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/taskstatus"
)

func runStatus(ctx context.Context, args []string, stdout, _ io.Writer, getenv env) error {
	var (
		c      common
		asJSON bool
	)
	fs := newFlagSet("enqueue status", "Usage: enqueue status TASK_ID [--json]\n\nFlags:\n")
	c.register(fs, getenv)
	fs.BoolVar(&asJSON, "json", false, "print one JSON object")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("TASK_ID: exactly one task ID is required")
	}
	rdb, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	s, err := taskstatus.Get(ctx, rdb, pos[0])
	if err != nil {
		return err
	}
	if asJSON {
		return writeStatusJSON(stdout, s)
	}
	return writeStatus(stdout, s)
}

// writeStatusJSON prints s with every string masked (redact.JSON): payload,
// result, reference, last error and attempt fields alike, however their
// addresses are spelled or escaped in Redis.
func writeStatusJSON(w io.Writer, s taskstatus.Status) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, redact.JSON(b), "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// writeStatus prints s for humans; every line goes through redact.Writer,
// and the payload and result are masked as JSON first (escaped addresses).
func writeStatus(stdout io.Writer, s taskstatus.Status) error {
	w := redact.NewWriter(stdout)
	fmt.Fprintf(w, "id:         %s\ntype:       %s\nqueue:      %s\nstate:      %s\nretried:    %d/%d\n", s.ID, s.Type, s.Queue, s.State, s.Retried, s.MaxRetry)
	if s.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", s.LastError)
	}
	if s.Result != nil {
		fmt.Fprintf(w, "result:     %s\n", redact.JSON(s.Result))
	}
	fmt.Fprintf(w, "payload:    %s\n", redact.JSON(s.Payload))
	fmt.Fprintf(w, "attempts:   %d\n", len(s.Attempts))
	for _, a := range s.Attempts {
		line := fmt.Sprintf("  #%d %s %-12s %6.0fms", a.Attempt, a.At.UTC().Format(time.RFC3339), a.Outcome, a.DurationMS)
		if a.Error != "" {
			line += "  " + a.Error
		} else if a.ProviderMessage != "" {
			line += "  " + a.ProviderMessage
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

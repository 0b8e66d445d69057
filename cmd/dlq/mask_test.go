package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestOutputMasksEmails: list and show, as tables and --json, show no
// address from any field of a dead letter: the payload (JSON-escaped), the
// reference, the last error and the attempts, including records written by
// a worker that did not mask them. The record keeps its payload verbatim.
func TestOutputMasksEmails(t *testing.T) {
	t.Parallel()
	const (
		payload = `{"order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"j\u00f6rg.m\u00fcller\u0040example.com"}],"reference":"for admin@example.com"}`
		addr    = "jörg.müller@example.com"
		ref     = "for admin@example.com"
	)
	leaks := []string{"rg.m", "ller", `\u00f6rg`, "dmin@"}
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := setup(t, b)
		const id = "5d1c7a2e-0000-4000-8000-000000000001"
		a := outcome.Attempt{
			TaskID: id, Type: tasks.TypeDigiCertResendEmails, Queue: "digicert", Provider: "digicert", OrderID: "12345",
			Reference: ref, Attempt: 1, Outcome: outcome.Dead, Class: "permanent", HTTPStatus: 400,
			ProviderMessage: "no approver " + addr, Error: "digicert: 400 no approver " + addr + " (permanent)", At: time.Now(),
		}
		require.NoError(t, e.store.Record(t.Context(), a, &outcome.DeadLetter{
			ID: id, Type: a.Type, Queue: a.Queue, Provider: a.Provider, OrderID: a.OrderID, Reference: ref,
			Payload: outcome.Payload(payload), MaxRetry: 3, LastError: a.Error, LastFailedAt: time.Now(),
			Class: "permanent", Source: "handler",
		}))

		for _, args := range [][]string{{"show", id}, {"list"}, {"show", id, "--json"}, {"list", "--json"}} {
			t.Run(args[0]+map[bool]string{true: " json"}[len(args) > 1 && args[len(args)-1] == "--json"], func(t *testing.T) {
				code, stdout, stderr := e.dlq(t, args...)
				require.Equal(t, exitOK, code, stderr)
				for _, l := range leaks {
					require.NotContains(t, stdout, l)
				}
				require.Contains(t, stdout, "j***@example.com")
			})
		}
		_, stdout, _ := e.dlq(t, "show", id)
		require.Contains(t, stdout, `"email":"j***@example.com"`)
		require.Contains(t, stdout, "for a***@example.com")
		require.Contains(t, stdout, "digicert: 400 no approver j***@example.com (permanent)")

		dl, ok, err := e.store.DeadLetter(t.Context(), id)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, payload, string(dl.Payload), "stored verbatim for replay")
	})
}

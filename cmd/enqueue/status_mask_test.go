package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestStatusMasksEmails: status, human and --json, shows no address from
// the payload (even JSON-escaped), the result, the last error or the
// attempts (records written by a worker that did not mask them included);
// Redis keeps the payload verbatim.
func TestStatusMasksEmails(t *testing.T) {
	t.Parallel()
	const (
		payload = `{"order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"j\u00f6rg.m\u00fcller\u0040example.com"}],"reference":"for admin@example.com"}`
		addr    = "jörg.müller@example.com"
	)
	leaks := []string{"rg.m", "ller", `\u00f6rg`, "dmin@"}
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		enq := tasks.NewEnqueuer(e.rdb)
		t.Cleanup(func() { _ = enq.Close() })
		id, err := enq.EnqueueRaw(t.Context(), tasks.TypeDigiCertResendEmails, []byte(payload),
			tasks.Options{MaxRetry: 3, Timeout: time.Minute, Retention: time.Hour})
		require.NoError(t, err)
		store := outcome.NewStore(e.rdb, time.Hour)
		require.NoError(t, store.Record(t.Context(), outcome.Attempt{
			TaskID: id, Type: tasks.TypeDigiCertResendEmails, Queue: "digicert", Provider: "digicert", OrderID: "12345",
			Reference: "for admin@example.com", Attempt: 1, Outcome: outcome.Retrying, Class: "transient",
			ProviderMessage: "no approver " + addr, Error: "digicert: 503 no approver " + addr, At: time.Now(),
		}, nil))

		r := e.run(t, "status", id)
		require.Equal(t, exitOK, r.code, r.stderr)
		for _, l := range leaks {
			require.NotContains(t, r.stdout, l)
		}
		require.Contains(t, r.stdout, `"email":"j***@example.com"`)
		require.Contains(t, r.stdout, "digicert: 503 no approver j***@example.com")

		r = e.run(t, "status", id, "--json")
		require.Equal(t, exitOK, r.code, r.stderr)
		for _, l := range leaks {
			require.NotContains(t, r.stdout, l)
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &m), r.stdout)
		p := m["payload"].(map[string]any)
		require.Equal(t, "for a***@example.com", p["reference"])
		require.Equal(t, "j***@example.com", p["domain_approval_emails"].([]any)[0].(map[string]any)["email"])
		a := m["attempts"].([]any)[0].(map[string]any)
		require.Equal(t, "for a***@example.com", a["reference"])
		require.Equal(t, "no approver j***@example.com", a["provider_message"])
		require.Equal(t, "digicert: 503 no approver j***@example.com", a["error"])

		info, err := e.insp.GetTaskInfo("digicert", id)
		require.NoError(t, err)
		require.Equal(t, payload, string(info.Payload), "stored verbatim")
	})
}

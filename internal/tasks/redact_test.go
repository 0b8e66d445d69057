package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
)

// lockedBuffer is a log sink shared with asynq's worker goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHandlerMasksEmails: the provider's message (on success too), the
// caller's reference and errors are stored, returned to asynq and logged
// with email addresses masked; the payload is kept verbatim for replay.
func TestHandlerMasksEmails(t *testing.T) {
	t.Parallel()
	const (
		addr   = "jörg.müller@example.com"
		masked = "j***@example.com"
		ref    = "ticket for " + addr
	)
	leaks := []string{"rg.m", "ller@"}
	tests := []struct {
		name      string
		resend    func(context.Context, int, providers.Request) (providers.Result, error)
		wantState asynq.TaskState
	}{
		{"success", func(context.Context, int, providers.Request) (providers.Result, error) {
			return providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "Email sent to " + addr}, nil
		}, asynq.TaskStateCompleted},
		{"permanent failure", func(context.Context, int, providers.Request) (providers.Result, error) {
			return providers.Result{}, &fakeErr{msg: "opensrs: 465 no such approver " + addr + " (permanent)", d: providers.Detail{Provider: providers.OpenSRS, Class: providers.Permanent,
				StatusCode: 200, Code: "465", Message: "no such approver " + addr}}
		}, asynq.TaskStateArchived},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				hb := setupHandler(t, b, tc.resend)
				var logs lockedBuffer
				hb.handler.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) // not the worker's masking logger
				hb.start(t)
				p := NewOpenSRSPayload("1799", ref, false)
				e, err := hb.enq.Enqueue(t.Context(), p, handlerOptions(0))
				require.NoError(t, err)
				info := hb.waitFinal(t, QueueOpenSRS, e.ID)
				require.Equal(t, tc.wantState, info.State)

				// What replay reads stays verbatim.
				var stored struct {
					Reference string `json:"reference"`
				}
				require.NoError(t, json.Unmarshal(info.Payload, &stored))
				require.Equal(t, ref, stored.Reference)

				var out []string
				as := hb.attempts(t, e.ID)
				require.Len(t, as, 1)
				require.Equal(t, "ticket for "+masked, as[0].Reference)
				require.Contains(t, as[0].ProviderMessage, masked)
				a, err := json.Marshal(as)
				require.NoError(t, err)
				out = append(out, string(a), info.LastErr, string(info.Result), logs.String())
				if tc.wantState == asynq.TaskStateCompleted {
					var res Result
					require.NoError(t, json.Unmarshal(info.Result, &res))
					require.Equal(t, "ticket for "+masked, res.Reference)
					require.Equal(t, "Email sent to "+masked, res.ProviderMessage)
				} else {
					require.Contains(t, info.LastErr, masked)
					dl, dead, err := hb.store.DeadLetter(t.Context(), e.ID)
					require.NoError(t, err)
					require.True(t, dead)
					require.Equal(t, "ticket for "+masked, dl.Reference)
					require.JSONEq(t, string(info.Payload), string(dl.Payload), "dead letter keeps the payload verbatim")
					dl.Payload = nil
					d, err := json.Marshal(dl)
					require.NoError(t, err)
					out = append(out, string(d))
				}
				require.Contains(t, logs.String(), masked)
				for _, o := range out {
					for _, l := range leaks {
						require.NotContains(t, o, l)
					}
				}
			})
		})
	}
}
